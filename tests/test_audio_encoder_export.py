"""Qwen3-ASR split encoder: torch wrappers -> ONNX (fp32/fp16) -> board-host logic, against HF.

A tiny random Qwen3ASRForConditionalGeneration stands in for the real checkpoint. Its weights are
re-drawn larger than HF's init (std 0.02) so attention is peaked and a wrong window would show.
"""

import numpy as np
import pytest
import torch

from smt_convert.archs.qwen3_asr.encoder_torch import AudioBackend, AudioFrontend, attention_window_rows, encoder_export_specs
from smt_convert.converters.onnx_export import OnnxSpec, export_onnx
from smt_convert.runtime.audio import log_mel, post_cnn_length
from smt_convert.runtime.audio_encoder import SplitAudioEncoder
from smt_convert.runtime.errors import SmtError

# Measured on this model (outputs |max| ~6, rms ~1.8): fp32 max_abs <= 6.2e-6, cosine 1 - 3e-13;
# fp16 max_abs <= 1.25e-2, cosine >= 0.9999994. Tolerances leave ~8x (fp32) and ~2.4x (fp16) headroom.
FP32_ATOL, FP32_COS = 5e-5, 0.999999
FP16_ATOL, FP16_COS = 3e-2, 0.9999
SECONDS = [0.7, 3.0, 12.0]


def _tiny_model():
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen3ASRConfig(
        audio_config=dict(
            d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
            downsample_hidden_size=32, output_dim=64, num_mel_bins=128, n_window=50, n_window_infer=800,
        ),
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1000,
        ),
    )
    model = Qwen3ASRForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (model.model.audio_tower, model.model.multi_modal_projector):
            for name, p in module.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                if "layer_norm" in name or "ln_post" in name:
                    p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
                elif name.endswith("bias"):
                    p.copy_(0.1 * noise)
                else:
                    p.copy_(noise * 1.5 / p[0].numel() ** 0.5)
    return model


def _wave(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _hf_inputs(wave):
    from transformers import Qwen3ASRFeatureExtractor

    out = Qwen3ASRFeatureExtractor()(wave, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    return out["input_features"], out["attention_mask"]


def _hf_reference(model, feats, mask, zero_padding=True):
    """HF pooler_output. zero_padding: zero the frames past the mask, as the original Qwen3-ASR and the board do."""
    if zero_padding:
        feats = feats * mask[:, None, :].to(feats.dtype)
    with torch.no_grad():
        return model.get_audio_features(feats, mask).pooler_output.numpy()


def _diff(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.abs(a - b).max()), float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """{dtype: (SplitAudioEncoder, [frontend report, backend report])}."""
    out = {}
    specs = encoder_export_specs(model.model.audio_tower, model.model.multi_modal_projector, model.config.audio_config)
    for dtype in ("fp32", "fp16"):
        folder = tmp_path_factory.mktemp(dtype)
        reports = [export_onnx(s, folder / f"tiny-{s.name}.onnx", dtype=dtype, log=lambda m: None) for s in specs]
        out[dtype] = (SplitAudioEncoder(reports[0].path, reports[1].path), reports)
    return out


def test_graph_contract(exported):
    for dtype, (encoder, (front, back)) in exported.items():
        assert front.inputs == [{"name": "input_features", "shape": [1, 128, 100], "dtype": "float32"}]
        assert front.outputs == [{"name": "chunk_embeds", "shape": [1, 13, 64], "dtype": "float32"}]
        assert back.inputs == [{"name": "audio_embeds", "shape": [1, "T", 64], "dtype": "float32"}]
        assert back.outputs == [{"name": "audio_features", "shape": ["T", 64], "dtype": "float32"}]
        assert front.simplified and back.simplified, (front.notes, back.notes)
        lengths = sorted(c["shape"][0] for c in back.checks)
        assert lengths == [13, 50, 104, 105, 137, 250, 400]
        contract = encoder.input_output_contract()
        assert (contract["chunk_rows"], contract["d_model"], contract["output_dim"]) == (13, 64, 64)
        print(dtype, "frontend worst", front.worst(), "backend worst", back.worst())


@pytest.mark.parametrize("t", [13, 50, 104, 105, 250, 400])
def test_backend_matches_hf_layers(model, exported, t):
    """ONNX backend at many T vs HF's own layers run with HF's cu_seqlens windows."""
    from transformers.models.qwen3_asr.modeling_qwen3_asr import get_audio_cu_seqlens

    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    rows = torch.randn(t, 64, generator=torch.Generator().manual_seed(t))
    full, rest = divmod(t, 13)
    n_frames = 100 * full + 8 * rest  # 8r leftover frames give r rows (three stride-2 convs)
    chunks = torch.tensor([100] * full + ([8 * rest] if rest else []))
    cu = get_audio_cu_seqlens(chunks, torch.tensor([n_frames]), 800, 50)
    assert post_cnn_length(n_frames) == t and int(cu[-1]) == t
    with torch.no_grad():
        h = rows
        for layer in tower.layers:
            h = layer(h, cu)[0]
        ref = projector(tower.ln_post(h)).numpy()
    for dtype, atol, cos_min in (("fp32", FP32_ATOL, FP32_COS), ("fp16", FP16_ATOL, FP16_COS)):
        backend = exported[dtype][0].backend
        out = backend.run(None, {"audio_embeds": rows[None].numpy()})[0]
        max_abs, cos = _diff(out, ref)
        print(f"T={t} {dtype}: max_abs={max_abs:.2e} cos={cos:.8f}")
        assert out.shape == ref.shape and max_abs < atol and cos > cos_min


@pytest.mark.parametrize("seconds", SECONDS)
def test_split_encoder_matches_hf(model, exported, seconds):
    feats, mask = _hf_inputs(_wave(seconds))
    n_valid = int(mask.sum())
    ref = _hf_reference(model, feats, mask)
    assert ref.shape[0] == post_cnn_length(n_valid)
    for dtype, atol, cos_min in (("fp32", FP32_ATOL, FP32_COS), ("fp16", FP16_ATOL, FP16_COS)):
        encoder = exported[dtype][0]
        out = encoder.encode(feats[0, :, :n_valid].numpy())
        max_abs, cos = _diff(out, ref)
        # the numpy features (runtime/audio.py) instead of HF's: what the board actually feeds
        ours = encoder.encode(log_mel(_wave(seconds)))
        max_abs_np, cos_np = _diff(ours, ref)
        print(f"{seconds}s rows={ref.shape[0]} {dtype}: max_abs={max_abs:.2e} cos={cos:.8f} | numpy mel: {max_abs_np:.2e} {cos_np:.8f}")
        assert out.shape == ref.shape and max_abs < atol and cos > cos_min
        assert max_abs_np < atol and cos_np > cos_min


def test_hf_partial_chunk_quirk(model):
    """HF feeds the partial last chunk with the log-mel of the padded signal, not zeros (the original
    Qwen3-ASR code and the board zero-pad). Only clips whose frame count is not a multiple of 100 differ."""
    for seconds, differs in ((0.7, True), (3.0, False)):
        feats, mask = _hf_inputs(_wave(seconds))
        raw = _hf_reference(model, feats, mask, zero_padding=False)
        zeroed = _hf_reference(model, feats, mask, zero_padding=True)
        max_abs, cos = _diff(raw, zeroed)
        print(f"{seconds}s HF raw vs zero-padded partial chunk: max_abs={max_abs:.2e} cos={cos:.6f}")
        assert (max_abs > 1e-3) == differs


def test_windowing_is_exercised(model, exported):
    """On 12 s (156 rows > 104-row window) full attention would give clearly different output."""
    feats, mask = _hf_inputs(_wave(12.0))
    ref = _hf_reference(model, feats, mask)
    backend = AudioBackend(model.model.audio_tower, model.model.multi_modal_projector)
    assert backend.window == attention_window_rows(model.config.audio_config) == 104
    backend.window = 10_000  # one window: full attention
    frontend = AudioFrontend(model.model.audio_tower)
    x = feats[:, :, :1200]
    with torch.no_grad():
        rows = torch.cat([frontend(x[:, :, i : i + 100]) for i in range(0, 1200, 100)], dim=1)
        full = backend(rows).numpy()
    assert _diff(full, ref)[0] > 100 * FP32_ATOL


def test_backend_mask_input_is_fed_zeros(model, tmp_path):
    """A backend declaring the board's optional mask input gets zeros [1, 1, t, t]."""

    class WithMask(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, rows, mask):
            return self.inner(rows) + mask.sum()  # any non-zero mask would shift the output

    specs = encoder_export_specs(model.model.audio_tower, model.model.multi_modal_projector)
    back = specs[1]
    spec = OnnxSpec(
        name="masked", module=WithMask(back.module), example_inputs=(back.example_inputs[0], torch.zeros(1, 1, 137, 137)),
        input_names=["audio_embeds", "mask"], output_names=["audio_features"],
        dynamic_axes={"audio_embeds": {1: "T"}, "mask": {2: "T", 3: "T"}, "audio_features": {0: "T"}},
        check_inputs=[],
    )
    front = export_onnx(specs[0], tmp_path / "f.onnx", simplify=False, exporter="torchscript", log=lambda m: None)
    masked = export_onnx(spec, tmp_path / "b.onnx", simplify=False, exporter="torchscript", log=lambda m: None)
    encoder = SplitAudioEncoder(front.path, masked.path)
    feats, mask = _hf_inputs(_wave(3.0))
    out = encoder.encode(feats[0, :, : int(mask.sum())].numpy())
    assert _diff(out, _hf_reference(model, feats, mask))[0] < FP32_ATOL


def test_export_errors(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    spec = OnnxSpec("bad", Bad(), (torch.zeros(2),), ["x"], ["y"], None, [])
    with pytest.raises(Exception):
        export_onnx(spec, tmp_path / "bad.onnx", log=lambda m: None)  # torch itself fails on the reference run

    class Good(torch.nn.Module):
        def forward(self, x):
            return x * 2

    spec = OnnxSpec("good", Good(), (torch.zeros(1, 4),), ["x"], ["y"], None, [])
    with pytest.raises(SmtError, match="dtype"):
        export_onnx(spec, tmp_path / "good.onnx", dtype="int4", log=lambda m: None)
    with pytest.raises(SmtError, match="missing.onnx"):
        SplitAudioEncoder(tmp_path / "missing.onnx", tmp_path / "missing.onnx")


def test_external_data_path(model, tmp_path, monkeypatch):
    """Above the size threshold weights go to <file>.data and everything still checks and runs."""
    import smt_convert.converters.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 10_000)
    spec = encoder_export_specs(model.model.audio_tower, model.model.multi_modal_projector)[0]
    report = export_onnx(spec, tmp_path / "front.onnx", exporter="torchscript", log=lambda m: None)
    assert report.external_data and (tmp_path / "front.onnx.data").is_file()
    assert not report.simplified and "simplify skipped" in report.notes[0]
    assert report.worst()["max_abs"] < FP32_ATOL
