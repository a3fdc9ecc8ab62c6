"""The reference side of the divergence trace: the Hugging Face model's block outputs, written as they appear.

Every family's reference builds its transformers modules through `reference_stream.build_module`; while a trace
runs, `Recorder` watches those builds and hooks the outputs of the blocks the bundle also has: each decoder layer
(`<text prefix>layers.<i>.`, the prefix of the checkpoint's token embedding), the embeddings entering layer 0,
and each encoder block (`...layers.<i>.` / `...blocks.<i>.` outside the text prefix). Each output goes to disk
the moment its block has run, so the trace holds one block at a time, like the reference itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smt_convert.runtime.trace import EMBEDDINGS, ENCODER_OUTPUT, LOGITS, ActivationStore, text_layer

ENCODER_BLOCK = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.$")


def encoder_block(i: int) -> str:
    return f"encoder.block.{i}"


def text_prefix(expected_tensors: dict) -> str:
    """The decoder's prefix in canonical names: where `embed_tokens.weight` lives (every family's decoder is a
    transformers `...Model` with `embed_tokens` and `layers`)."""
    names = [n for n in expected_tensors if n.endswith("embed_tokens.weight")]
    if len(names) != 1:
        raise ValueError(f"expected one token embedding among the canonical tensors, found {names}")
    return names[0][: -len("embed_tokens.weight")]


@dataclass
class Recorder:
    """A `watching_builds` watcher: hooks the blocks' outputs into `store`. An encoder block run on a batch of
    several inputs (Qwen3-ASR's reference encodes the board's and HF's host paths together) keeps the first
    `encoder_rows` rows of the packed output: the input the bundle's encoder saw."""

    store: ActivationStore
    text: str  # canonical text prefix
    encoder_rows: int | None = None
    seen: list[str] = field(default_factory=list)

    def __call__(self, prefix: str, module) -> None:
        if prefix.startswith(self.text):
            m = re.fullmatch(r"layers\.(\d+)\.", prefix[len(self.text) :])
            if m:
                i = int(m.group(1))
                if i == 0:
                    module.register_forward_pre_hook(self._pre(EMBEDDINGS), with_kwargs=True)
                module.register_forward_hook(self._post(text_layer(i)))
            return
        m = ENCODER_BLOCK.search(prefix)
        if m:
            module.register_forward_hook(self._post(encoder_block(int(m.group(1))), self.encoder_rows))

    def result(self, ref) -> None:
        """The reference's answers the trace also compares: logits and the encoder's final rows."""
        self.store.put(LOGITS, ref.logits)
        if ref.encoder is not None:
            self.store.put(ENCODER_OUTPUT, ref.encoder)

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            self._put(name, args[0] if args else kwargs["hidden_states"], None)

        return hook

    def _post(self, name: str, rows: int | None = None):
        def hook(module, args, output):
            self._put(name, output, rows)

        return hook

    def _put(self, name: str, value, rows: int | None) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0]
        array = value.detach().float().numpy()
        array = array.reshape(-1, array.shape[-1])
        if rows is not None and array.shape[0] > rows:
            array = array[:rows]
        self.store.put(name, array)
        self.seen.append(name)


def trace_recorder(plugin, hp, store: ActivationStore, result) -> Recorder:
    """The recorder for one run of the bundle: its text prefix from the plugin's canonical tensors, its encoder
    rows from the run (the first item of a batched reference encoder)."""
    rows = None if result.media_embeds is None else int(result.media_embeds.shape[0])
    return Recorder(store, text_prefix(plugin.expected_tensors(hp)), encoder_rows=rows)
