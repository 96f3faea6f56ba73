"""Checkpoint -> ONNX model directory, with a parity check against PyTorch."""
