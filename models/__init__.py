"""Streaming CTC acoustic models: data, architecture, training, language model."""
