"""qwen3_asr: the plugin registers itself on import."""

from smt_convert.archs.qwen3_asr import plugin  # noqa: F401
