"""ctc-asr serving: gRPC speech recognition on an ONNX CTC model (no torch needed)."""
