"""paddleocr_vl: the plugin registers itself on import."""

from smt_convert.archs.paddleocr_vl import plugin  # noqa: F401
