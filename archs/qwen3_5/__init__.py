"""qwen3_5: the plugin registers itself on import."""

from smt_convert.archs.qwen3_5 import plugin  # noqa: F401
