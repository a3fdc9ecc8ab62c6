"""Builders of tiny random checkpoints and tokenizers, for tests, `tiny` recipes and the example.

Not used by conversion itself: the shipped converter never imports this package.
"""
