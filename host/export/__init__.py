"""Export of a quantized model: ONNX, hls4ml projects, and the final fine-tune-and-export of a search."""
