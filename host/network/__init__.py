"""Network specs from torch models (by tracing) and from ONNX graphs."""
