"""qwen3_vl: the plugin registers itself on import."""

from smt_convert.archs.qwen3_vl import plugin  # noqa: F401
