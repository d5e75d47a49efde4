"""Running a model on a CT volume: ONNX Runtime engine, HU windowing, slice resampling, the
segmentation pipeline, label-map post-processing and per-structure volumes."""
