"""What only the Slicer module needs, kept Slicer-free so it is tested without Slicer: settings
validation, status text, the background task, ONNX Runtime installation, organ-volume ranges,
terminology entries and the module's array-in/labels-out segmentation path."""
