"""KDSegmentationLib: Slicer-free organ segmentation of CT volumes with ONNX Runtime.

Imports no slicer, qt, vtk or torch, so it runs inside 3D Slicer, on the command
line (``kdseg``) and in the training code's evaluation alike.
"""

__version__ = "0.1.0"
