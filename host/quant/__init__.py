"""Kernel-wise quantization of torch models: per-output-channel weight bits, per-layer activation bits."""
