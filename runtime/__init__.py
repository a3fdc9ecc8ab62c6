"""Minimal bundle runtime and verification: numpy + onnxruntime + gguf + tokenizers, no torch."""
