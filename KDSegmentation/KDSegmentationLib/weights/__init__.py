"""Which model and where its weights are: the model registry (model cards), finding the ONNX
file (bundled, user cache, download) and the verified, resumable download."""
