"""Qwen3-ASR split encoder written node by node (archs/qwen3_asr/encoder_graph.py) against transformers' own
modules with the same weights: `Qwen3ASREncoder` (its convolutions, positions, windowed layers, ln_post) and
`Qwen3ASRMultiModalProjector`, at fp32, fp16 and int8, and through the board's chunked host path.

The tiny model's weights are re-drawn larger than HF's init (std 0.02) so attention is peaked and a wrong window
would show.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smt_convert.archs.qwen3_asr.config import Hparams, read_hparams
from smt_convert.archs.qwen3_asr.encoder_graph import build_encoders
from smt_convert.converters.onnx_graph import Weights
from smt_convert.converters.onnx_write import write_encoder
from smt_convert.runtime.audio import log_mel, post_cnn_length
from smt_convert.runtime.audio_encoder import SplitAudioEncoder

# Tolerances: (max abs / max |reference|, minimum cosine), measured with `-s` (they print). Tiny model (outputs
# |max| ~6): fp32 <= 1.4e-6; fp16 <= 1.8e-3, cosine >= 0.9999994; int8 <= 9.5e-2, cosine >= 0.99893 (dynamic
# per-tensor activation quantisation of every MatMul). One layer at the real 0.6B width with HF's init (std 0.02,
# so small outputs): fp32 9e-7, fp16 4.6e-4 / 0.9999999, int8 0.128 / 0.99356. Bounds leave >= 2x margin on the
# error (int8: on 1 - cosine).
TOLERANCE = {"fp32": (1e-5, 0.99999999), "fp16": (5e-3, 0.99999), "int8": (0.2, 0.997)}
REAL_WIDTH_INT8 = (0.3, 0.985)
DTYPES = tuple(TOLERANCE)
BACKEND_LENGTHS = [5, 13, 103, 104, 105, 250, 400]  # window W = 104 rows: shorter, W-1, W, W+1, several windows


def tiny_config(**audio):
    from transformers import Qwen3ASRConfig

    audio_cfg = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                     downsample_hidden_size=32, output_dim=64, num_mel_bins=128, n_window=50, n_window_infer=800)
    audio_cfg.update(audio)
    text = dict(hidden_size=audio_cfg["output_dim"], intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1000, tie_word_embeddings=True)
    return Qwen3ASRConfig(audio_config=audio_cfg, text_config=text, audio_token_id=5, tie_word_embeddings=True)


class HFEncoder:
    """The HF audio tower + projector with their own weights; `weights` exposes them by canonical name."""

    def __init__(self, config, scale_weights: bool):
        from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder, Qwen3ASRMultiModalProjector

        torch.manual_seed(0)
        self.config = config
        self.tower = Qwen3ASREncoder(config.audio_config).eval()
        self.projector = Qwen3ASRMultiModalProjector(config).eval()
        if scale_weights:
            redraw(self.tower)
            redraw(self.projector)
        state = {f"model.audio_tower.{k}": v for k, v in self.tower.state_dict().items()}
        state.update({f"model.multi_modal_projector.{k}": v for k, v in self.projector.state_dict().items()})
        self.state = {k: v.detach().float().numpy() for k, v in state.items()}
        self.weights = Weights(load=lambda n: self.state[n], shape=lambda n: tuple(self.state[n].shape))
        ckpt = SimpleNamespace(config=config.to_dict(), config_path="config.json", tensors={})  # config only
        self.hp: Hparams = read_hparams(ckpt)

    def features(self, feats: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """HF `get_audio_features`: tower then projector."""
        with torch.no_grad():
            return self.projector(self.tower(feats, mask).last_hidden_state).numpy()

    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        """What HF's tower feeds its first layer for one full 100-frame chunk (CNN + conv_out + positions)."""
        seen = []
        hook = self.tower.layers[0].register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].clone()),
                                                              with_kwargs=True)
        try:
            with torch.no_grad():
                self.tower(torch.from_numpy(chunk), torch.ones(1, chunk.shape[2], dtype=torch.long))
        finally:
            hook.remove()
        return seen[0].numpy()[None]

    def backend(self, rows: np.ndarray) -> np.ndarray:
        """HF layers over T rows with HF's own window boundaries (`get_audio_cu_seqlens`), ln_post, projector."""
        from transformers.models.qwen3_asr.modeling_qwen3_asr import get_audio_cu_seqlens

        t = rows.shape[0]
        full, rest = divmod(t, 13)
        n_frames = 100 * full + 8 * rest  # 8r leftover frames give r rows (three stride-2 convs)
        chunks = torch.tensor([100] * full + ([8 * rest] if rest else []))
        cu = get_audio_cu_seqlens(chunks, torch.tensor([n_frames]), self.hp.n_window_infer, 50)
        assert post_cnn_length(n_frames) == t and int(cu[-1]) == t
        with torch.no_grad():
            h = torch.from_numpy(rows)
            for layer in self.tower.layers:
                h = layer(h, cu)[0]
            return self.projector(self.tower.ln_post(h)).numpy()


def redraw(module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name or "ln_post" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * 1.5 / p[0].numel() ** 0.5)


def write_all(hf: HFEncoder, folder) -> dict[str, SplitAudioEncoder]:
    """Frontend + backend written at every dtype (int8: the dynamic-quantisation pattern, built weight by weight)."""
    out = {}
    for dtype in DTYPES:
        graphs = build_encoders(hf.weights, hf.hp, dtype)
        paths = [folder / f"{dtype}-{g.role}.onnx" for g in graphs]
        for graph, path in zip(graphs, paths):
            write_encoder(graph, path, dtype)
        out[dtype] = SplitAudioEncoder(*paths)
    return out


def compare(out: np.ndarray, ref: np.ndarray, dtype: str, what: str, tolerance: tuple | None = None) -> None:
    a, b = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    print(f"{what} {dtype}: max abs / max |ref| = {rel:.2e}, cosine = {cos:.8f}")
    max_rel, min_cos = tolerance or TOLERANCE[dtype]
    assert out.shape == ref.shape and rel <= max_rel and cos >= min_cos, (what, dtype, rel, cos)


def wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def hf_features(w: np.ndarray):
    """HF's extractor, with the frames past the mask zeroed (the board and the original Qwen3-ASR zero-pad)."""
    from transformers import Qwen3ASRFeatureExtractor

    out = Qwen3ASRFeatureExtractor()(w, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    feats, mask = out["input_features"], out["attention_mask"]
    return feats * mask[:, None, :].to(feats.dtype), mask


@pytest.fixture(scope="module")
def tiny():
    return HFEncoder(tiny_config(), scale_weights=True)


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    return write_all(tiny, tmp_path_factory.mktemp("asr-graph"))


def test_contract(written):
    for dtype, enc in written.items():
        contract = enc.input_output_contract()
        front, back = contract["frontend"], contract["backend"]
        assert front["inputs"] == [{"name": "input_features", "shape": [1, 128, 100], "dtype": "tensor(float)"}]
        assert front["outputs"] == [{"name": "chunk_embeds", "shape": [1, 13, 64], "dtype": "tensor(float)"}]
        assert back["inputs"] == [{"name": "audio_embeds", "shape": [1, "T", 64], "dtype": "tensor(float)"}]
        assert back["outputs"] == [{"name": "audio_features", "shape": ["T", 64], "dtype": "tensor(float)"}]


def test_int8_quantises_matmuls_only(written):
    import onnx

    for role in ("frontend", "backend"):
        path = getattr(written["int8"], f"{role}_path")
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert "MatMulInteger" in ops and "ConvInteger" not in ops, (role, ops)
        if role == "frontend":
            assert "Conv" in ops


def test_frontend_matches_hf(tiny, written):
    rng = np.random.default_rng(3)
    for chunk in (rng.uniform(-1.5, 1.5, (1, 128, 100)).astype(np.float32), np.zeros((1, 128, 100), np.float32)):
        ref = tiny.chunk_rows(chunk)
        for dtype, enc in written.items():
            out = enc.frontend.run(None, {"input_features": chunk})[0]
            compare(out, ref, dtype, "frontend")


@pytest.mark.parametrize("t", BACKEND_LENGTHS)
def test_backend_matches_hf_layers(tiny, written, t):
    rows = np.random.default_rng(t).standard_normal((t, 64)).astype(np.float32)
    ref = tiny.backend(rows)
    for dtype, enc in written.items():
        out = enc.backend.run(None, {"audio_embeds": rows[None]})[0]
        compare(out, ref, dtype, f"backend T={t}")


@pytest.mark.parametrize("seconds", [0.7, 3.0, 12.0, 35.0])
def test_host_path_matches_get_audio_features(tiny, written, seconds):
    """The board's host logic (chunk, frontend per chunk, trim, backend) vs HF on the same zero-padded features."""
    feats, mask = hf_features(wave(seconds))
    n_valid = int(mask.sum())
    ref = tiny.features(feats, mask)
    assert ref.shape[0] == post_cnn_length(n_valid)
    for dtype, enc in written.items():
        compare(enc.encode(feats[0, :, :n_valid].numpy()), ref, dtype, f"{seconds}s host path")
    # the numpy features the runtime computes (runtime/audio.py) instead of HF's
    compare(written["fp32"].encode(log_mel(wave(seconds))), ref, "fp32", f"{seconds}s numpy log-mel")


def test_full_attention_would_fail(tiny, tmp_path):
    """A backend attending over all rows (one huge window) is far from HF on 12 s (156 rows > 104): the
    windowing is what the comparisons above check."""
    hp = dataclasses.replace(tiny.hp, n_window_infer=100 * 100)
    graph = build_encoders(tiny.weights, hp, "fp32")[1]
    write_encoder(graph, tmp_path / "full.onnx", "fp32")
    import onnxruntime as ort

    rows = np.random.default_rng(0).standard_normal((156, 64)).astype(np.float32)
    out = ort.InferenceSession(str(tmp_path / "full.onnx")).run(None, {"audio_embeds": rows[None]})[0]
    ref = tiny.backend(rows)
    assert np.abs(out - ref).max() > 100 * TOLERANCE["fp32"][0] * np.abs(ref).max()


def test_hf_partial_chunk_quirk(tiny):
    """HF feeds the partial last chunk with the log-mel of the padded signal, not zeros (the original Qwen3-ASR
    code and the board zero-pad). Only clips whose frame count is not a multiple of 100 differ."""
    from transformers import Qwen3ASRFeatureExtractor

    for seconds, differs in ((0.7, True), (3.0, False)):
        raw = Qwen3ASRFeatureExtractor()(wave(seconds), sampling_rate=16000, return_tensors="pt",
                                         return_attention_mask=True)
        zeroed, mask = hf_features(wave(seconds))
        diff = np.abs(tiny.features(raw["input_features"], mask) - tiny.features(zeroed, mask)).max()
        assert (diff > 1e-3) == differs, (seconds, diff)


def test_real_width_layer(tmp_path):
    """One encoder layer at the real 0.6B width (d_model 896, 14 heads, ffn 3584, 480 conv channels, output 1024),
    HF's own initialisation: frontend and backend (several windows) at every dtype."""
    hf = HFEncoder(tiny_config(d_model=896, encoder_layers=1, encoder_attention_heads=14, encoder_ffn_dim=3584,
                               downsample_hidden_size=480, output_dim=1024), scale_weights=False)
    enc = write_all(hf, tmp_path)
    chunk = np.random.default_rng(1).uniform(-1.5, 1.5, (1, 128, 100)).astype(np.float32)
    rows = np.random.default_rng(2).standard_normal((250, 896)).astype(np.float32)
    front_ref, back_ref = hf.chunk_rows(chunk), hf.backend(rows)
    for dtype, e in enc.items():
        tolerance = REAL_WIDTH_INT8 if dtype == "int8" else None
        compare(e.frontend.run(None, {"input_features": chunk})[0], front_ref, dtype, "0.6B frontend", tolerance)
        compare(e.backend.run(None, {"audio_embeds": rows[None]})[0], back_ref, dtype, "0.6B backend T=250", tolerance)
