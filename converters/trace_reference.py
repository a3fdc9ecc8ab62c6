"""The reference side of the divergence trace: the Hugging Face model's block outputs, written as they appear.

Every family's reference builds its transformers modules through `reference_stream.build_module`; while a trace
runs, `Recorder` watches those builds and hooks the output of every block (`...layers.<i>.` / `...blocks.<i>.`)
and the input of each tower's first block (an encoder's stem, the decoder's embeddings). Each goes to disk the
moment its block has run, so the trace holds one block at a time, like the reference itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smt_convert.converters.encoder_trace import encoder_point
from smt_convert.runtime.trace import EMBEDDINGS, ENCODER_OUTPUT, LOGITS, ActivationStore, text_layer

BLOCK = re.compile(r"^(.*?)(?:layers|blocks)\.(\d+)\.$")


@dataclass
class Recorder:
    """A `watching_builds` watcher: hooks every block's output (and the first block's input) into `store`
    under its prefix. Blocks group by the prefix before `layers.<i>.`/`blocks.<i>.`; the group built last is the
    text decoder (every reference runs its encoders first: their rows go into the decoder's input), whose
    entries `result` renames to the text names the runtime's side uses.

    An audio tower run on a batch (Qwen3-ASR's reference encodes the board's and HF's host paths together) keeps
    the first `encoder_rows` rows of its packed output: the input the bundle's encoder saw."""

    store: ActivationStore
    encoder_rows: int | None = None
    groups: list[str] = field(default_factory=list)  # block groups in build order
    seen: dict[str, set[int]] = field(default_factory=dict)  # group -> block indices

    def __call__(self, prefix: str, module) -> None:
        m = BLOCK.match(prefix)
        if m is None:
            return
        group, index = m.group(1), int(m.group(2))
        if group not in self.groups:
            self.groups.append(group)
        self.seen.setdefault(group, set()).add(index)
        if index == 0:
            module.register_forward_pre_hook(self._pre(encoder_point(prefix, "input")), with_kwargs=True)
        module.register_forward_hook(self._post(encoder_point(prefix, "output")))

    def result(self, ref) -> None:
        """After the reference: the last group's entries become the text decoder's; then the reference's own
        answers the trace also compares (logits, the encoder's final rows)."""
        for group in self.groups[:-1]:
            for i in self.seen[group]:
                for what in ("input", "output") if i == 0 else ("output",):
                    self._trim(encoder_point(f"{group}layers.{i}.", what))
                    self._trim(encoder_point(f"{group}blocks.{i}.", what))
        if self.groups:
            text = self.groups[-1]
            self.store.rename(encoder_point(f"{text}layers.0.", "input"), EMBEDDINGS)
            self.store.rename(encoder_point(f"{text}blocks.0.", "input"), EMBEDDINGS)
            for i in self.seen[text]:
                for kind in ("layers", "blocks"):
                    self.store.rename(encoder_point(f"{text}{kind}.{i}.", "output"), text_layer(i))
        self.store.put(LOGITS, ref.logits)
        if ref.encoder is not None:
            self.store.put(ENCODER_OUTPUT, ref.encoder)

    def _trim(self, name: str) -> None:
        if self.encoder_rows is not None and self.store.has(name):
            value = self.store.get(name)
            if value.shape[0] > self.encoder_rows:
                self.store.put(name, value[: self.encoder_rows])

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            self._put(name, args[0] if args else kwargs["hidden_states"])

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self._put(name, output)

        return hook

    def _put(self, name: str, value) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0]
        array = value.detach().float().numpy()
        array = array.reshape(-1, array.shape[-1])
        self.store.put(name, array)


def trace_recorder(plugin, hp, store: ActivationStore, result) -> Recorder:
    """The recorder for one run of the bundle. An audio tower's rows are the encoder's output rows (its
    projector works row by row): what is kept of a reference that encodes several inputs as one batch. A vision
    tower's blocks have more rows than it outputs (the merger joins them) and its reference encodes one image."""
    audio = result.media_embeds is not None and plugin.facts(hp).modality == "audio"
    return Recorder(store, int(result.media_embeds.shape[0]) if audio else None)
