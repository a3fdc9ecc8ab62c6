"""smt-convert: Hugging Face multimodal checkpoints -> verified SpacemiT board bundles."""

__version__ = "0.1.0"
