"""The SMT board host's vision encoder, in onnxruntime: one static [1, 3, H, W] float32 input, rows out.

Host logic (SMT contract): decode to RGB, antialiased bilinear resize to exactly H x W (runtime/host.py: the
board's own resize or Pillow's),
feed raw 0..255 (Qwen3-VL family; the graph normalises) or host-normalised values (PaddleOCR), and read
output 0 as [N, hidden] (a leading batch axis of 1 is accepted and dropped). A graph with several outputs
(Qwen3-VL's DeepStack) must give them all the same [N, hidden] shape; their rows are concatenated output by output
into [N, hidden x outputs], as the board's wrapper does (smt-vision-wrapper.cpp `run_session`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SmtError
from .host import DEFAULT_HOST, image_pixels
from .onnx_session import open_session


def _describe(session) -> dict:
    def info(values):
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.type} for v in values]

    return {"inputs": info(session.get_inputs()), "outputs": info(session.get_outputs())}


class VisionEncoder:
    """One ONNX session with the static image interface the board checks byte-for-byte."""

    def __init__(self, path, providers=None, intra_op_num_threads: int | None = None):
        self.path = Path(path)
        self.session = open_session(self.path, providers, intra_op_num_threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise SmtError(f"{self.path}: inputs: expected exactly one image input, got {len(inputs)}")
        inp = inputs[0]
        shape = list(inp.shape)
        if inp.type != "tensor(float)":
            raise SmtError(f"{self.path}: {inp.name}: expected float32, got {inp.type}")
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[0] != 1 or shape[1] != 3:
            raise SmtError(f"{self.path}: {inp.name}: expected static [1, 3, H, W], got {shape}")
        if not outputs:
            raise SmtError(f"{self.path}: outputs: none")
        out = outputs[0]
        if out.type != "tensor(float)":
            raise SmtError(f"{self.path}: {out.name}: expected float32 output, got {out.type}")
        batched = len(out.shape) == 3 and isinstance(out.shape[0], int) and out.shape[0] != 1
        if len(out.shape) not in (2, 3) or batched:
            raise SmtError(f"{self.path}: {out.name}: expected [N, hidden] or [1, N, hidden], got {list(out.shape)}")
        self.input_name = inp.name
        self._input_size = (shape[2], shape[3])

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the static input."""
        return self._input_size

    @property
    def hidden_size(self) -> int:
        """Width of each output row, -1 if the graph leaves it symbolic."""
        dim = self.session.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else -1

    @property
    def num_tokens(self) -> int:
        """Rows per image, -1 if the graph leaves it symbolic."""
        dim = self.session.get_outputs()[0].shape[-2]
        return dim if isinstance(dim, int) else -1

    @property
    def num_outputs(self) -> int:
        """1, or 1 + the DeepStack layers of a Qwen3-VL graph."""
        return len(self.session.get_outputs())

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [1, 3, H, W] float32 (exactly the static shape) -> embeddings [N, hidden x outputs] float32."""
        pixels = np.asarray(pixels)
        h, w = self._input_size
        if pixels.shape != (1, 3, h, w):
            raise ValueError(f"pixels must be [1, 3, {h}, {w}], got {list(pixels.shape)}")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        outs = [
            self._rows(out, meta.name)
            for out, meta in zip(self.session.run(None, {self.input_name: pixels}), self.session.get_outputs())
        ]
        if any(o.shape != outs[0].shape for o in outs[1:]):
            shapes = ", ".join(str(list(o.shape)) for o in outs)
            raise SmtError(f"{self.path}: outputs: DeepStack outputs must share one [N, hidden] shape, got {shapes}")
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _rows(self, out: np.ndarray, name: str) -> np.ndarray:
        if out.ndim == 3:
            if out.shape[0] != 1:
                raise SmtError(f"{self.path}: {name}: expected [1, N, hidden], got {list(out.shape)}")
            out = out[0]
        if out.ndim != 2:
            raise SmtError(f"{self.path}: {name}: expected [N, hidden], got {list(out.shape)}")
        return out

    def encode_image(self, img: np.ndarray, host: str = DEFAULT_HOST) -> np.ndarray:
        """uint8 [H0, W0, 3] RGB -> [N, hidden]: the host's resize to the static size, then `encode`.

        Raw 0..255 values are fed (Qwen3-VL family); a PaddleOCR host normalises first (image.normalize).
        """
        h, w = self._input_size
        return self.encode(image_pixels(img, w, h, host))

    def input_output_contract(self) -> dict:
        """Names, shapes and dtypes, for the bundle manifest."""
        h, w = self._input_size
        return {
            "path": self.path.name,
            **_describe(self.session),
            "input_height": h,
            "input_width": w,
            "hidden_size": self.hidden_size,
            "num_tokens": self.num_tokens,
        }
