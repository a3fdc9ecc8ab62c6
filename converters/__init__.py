"""Shared conversion machinery: checkpoint reading, validation, tokenizer, GGUF, ONNX, bundle writing."""
