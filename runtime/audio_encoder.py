"""The SMT board host's split audio encoder, in onnxruntime: what the board does, so it can be verified off-board.

Host logic (SMT contract): cut the log-mel into 100-frame chunks (last one zero-padded), run the
frontend per chunk, concatenate, keep the first `post_cnn_length(L)` rows, run the backend once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio import post_cnn_length
from .errors import SmtError
from .onnx_session import open_session


def _describe(session) -> dict:
    def info(values):
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.type} for v in values]

    return {"inputs": info(session.get_inputs()), "outputs": info(session.get_outputs())}


class SplitAudioEncoder:
    """Frontend (one chunk) + backend (all rows) sessions, run exactly as the board host runs them."""

    def __init__(self, frontend_path, backend_path, providers=None, intra_op_num_threads: int | None = None):
        self.frontend_path = Path(frontend_path)
        self.backend_path = Path(backend_path)
        self.frontend = open_session(self.frontend_path, providers, intra_op_num_threads)
        self.backend = open_session(self.backend_path, providers, intra_op_num_threads)
        self.num_mel_bins, self.chunk_frames, self.chunk_rows, self.d_model = self._frontend_shape()
        self.n_window = self.chunk_frames // 2
        self._backend_inputs = [i.name for i in self.backend.get_inputs()]
        if len(self._backend_inputs) > 2:
            raise SmtError(
                f"{self.backend_path}: inputs: expected 1 or 2 (rows, optional mask), got {len(self._backend_inputs)}"
            )

    def _frontend_shape(self):
        """Static [1, mel, chunk] -> [1, rows, d_model], as the host assumes."""
        inputs, outputs = self.frontend.get_inputs(), self.frontend.get_outputs()
        if len(inputs) != 1:
            raise SmtError(f"{self.frontend_path}: inputs: expected exactly one, got {len(inputs)}")
        in_shape, out_shape = inputs[0].shape, outputs[0].shape
        if len(in_shape) != 3 or not all(isinstance(d, int) for d in in_shape) or in_shape[0] != 1:
            raise SmtError(f"{self.frontend_path}: {inputs[0].name}: expected static [1, mel, frames], got {in_shape}")
        if len(out_shape) != 3 or not all(isinstance(d, int) for d in out_shape[1:]):
            raise SmtError(f"{self.frontend_path}: {outputs[0].name}: expected [1, rows, d_model], got {out_shape}")
        return in_shape[1], in_shape[2], out_shape[1], out_shape[2]

    @property
    def output_dim(self) -> int:
        dim = self.backend.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else -1

    def encode(self, features: np.ndarray) -> np.ndarray:
        """features [num_mel_bins, L] -> embeddings [post_cnn_length(L), output_dim] float32."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != self.num_mel_bins or features.shape[1] == 0:
            raise ValueError(f"features must be [{self.num_mel_bins}, L>0], got {features.shape}")
        n_frames = features.shape[1]
        n_chunks = -(-n_frames // self.chunk_frames)
        padded = np.zeros((self.num_mel_bins, n_chunks * self.chunk_frames), dtype=np.float32)
        padded[:, :n_frames] = features
        name = self.frontend.get_inputs()[0].name
        rows = []
        for i in range(n_chunks):
            chunk = padded[None, :, i * self.chunk_frames : (i + 1) * self.chunk_frames]
            rows.append(self.frontend.run(None, {name: chunk})[0].reshape(-1, self.d_model))
        t_out = post_cnn_length(n_frames, self.n_window)
        hidden = np.concatenate(rows, axis=0)[:t_out][None]
        feeds = {self._backend_inputs[0]: np.ascontiguousarray(hidden)}
        if len(self._backend_inputs) == 2:  # the host's optional mask: always zeros
            feeds[self._backend_inputs[1]] = np.zeros((1, 1, t_out, t_out), dtype=np.float32)
        out = self.backend.run(None, feeds)[0]
        return np.ascontiguousarray(out.reshape(t_out, -1), dtype=np.float32)

    def input_output_contract(self) -> dict:
        """Names, shapes and dtypes of both sessions, for the bundle manifest."""
        return {
            "frontend": {"path": self.frontend_path.name, **_describe(self.frontend)},
            "backend": {"path": self.backend_path.name, **_describe(self.backend)},
            "num_mel_bins": self.num_mel_bins,
            "chunk_frames": self.chunk_frames,
            "chunk_rows": self.chunk_rows,
            "d_model": self.d_model,
            "output_dim": self.output_dim,
        }
