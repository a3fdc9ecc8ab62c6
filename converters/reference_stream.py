"""The Hugging Face reference, one module at a time: peak memory stays near one layer, whatever the depth.

A plugin's `reference` builds the model's own transformers classes (a decoder layer, an encoder block, the
rotary embedding) with `build_module`, fills them from the checkpoint with `load_module` (every parameter must
come from the checkpoint: nothing random survives), runs them, and frees them before the next. Greedy
decoding is checked by teacher forcing: one pass over prompt + the runtime's continuation gives the reference's
arg-max at every step; it equals `generate`'s tokens up to the first disagreement, which is all the greedy
comparison needs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import numpy as np

from smt_convert.runtime.errors import SmtError

if TYPE_CHECKING:
    import torch

# Watchers of every module `build_module` makes (prefix, module): the divergence trace hooks the blocks' outputs
# this way (converters/trace_reference.py), so no family's reference code knows it is being traced.
_WATCHERS: list[Callable[[str, "torch.nn.Module"], None]] = []


@contextmanager
def watching_builds(watch: Callable[[str, "torch.nn.Module"], None]):
    """While active, `watch(prefix, module)` sees each module built from the checkpoint, before it runs."""
    _WATCHERS.append(watch)
    try:
        yield
    finally:
        _WATCHERS.remove(watch)


def build_module(
    factory: Callable[[], "torch.nn.Module"],
    load: Callable[[str], "torch.Tensor"],
    prefix: str,
    where: str = "checkpoint",
) -> "torch.nn.Module":
    """`factory()` without random initialisation, then every parameter loaded from `prefix + name`."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        module = factory()
    load_module(module, load, prefix, where)
    for watch in _WATCHERS:
        watch(prefix, module)
    return module.eval()


def streamed(
    factory: Callable[[], "torch.nn.Module"],
    load: Callable[[str], "torch.Tensor"],
    prefix: str,
    where: str = "checkpoint",
) -> "torch.nn.Module":
    """A stand-in for one block inside a transformers model's own forward: each call builds the real block from
    the checkpoint, runs it and lets it go, so a tower or decoder holds one block's weights at a time."""
    import torch

    class Streamed(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return build_module(factory, load, prefix, where)(*args, **kwargs)

    return Streamed()


def load_module(
    module: "torch.nn.Module", load: Callable[[str], "torch.Tensor"], prefix: str, where: str = "checkpoint"
) -> None:
    """Copy `load(prefix + name)` (as float32) into each parameter; a missing tensor or a shape that differs
    is an error naming the tensor, so a module never runs with weights it did not get from the checkpoint."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            try:
                value = load(prefix + name)
            except SmtError:
                raise SmtError(
                    f"{where}: tensor {prefix + name}: the reference model needs it but it is missing"
                ) from None
            if tuple(value.shape) != tuple(param.shape):
                raise SmtError(
                    f"{where}: tensor {prefix + name}: shape {list(value.shape)}, the model expects {list(param.shape)}"
                )
            param.copy_(value.to(torch.float32))


def teacher_forced_tokens(logits: np.ndarray, prompt_len: int, continuation: list[int]) -> list[int]:
    """The reference's greedy tokens given logits over prompt + continuation: its arg-max at each step, up to
    and including the first step where it disagrees with the continuation (after that its own greedy path
    would differ from the sequence it was fed)."""
    out = []
    for step in range(len(continuation) + 1):
        pos = prompt_len - 1 + step
        if pos >= logits.shape[0]:
            break
        token = int(np.argmax(logits[pos]))
        out.append(token)
        if step >= len(continuation) or token != continuation[step]:
            break
    return out
