"""One numpy decoder per GGUF architecture."""
