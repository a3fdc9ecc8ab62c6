"""The Hugging Face reference for a Qwen3-ASR bundle, streamed: transformers' own classes, one module at a time.

Encoder: HF's `Qwen3ASREncoder.forward` runs unchanged (its chunking, its window boundaries, its selection of
valid rows) with every layer built from the checkpoint just before it runs and freed after; then the projector.
Text: the token embeddings of prompt + continuation with the encoder rows spliced at the audio placeholders,
1-D positions, each `Qwen3DecoderLayer` built, run over the whole sequence and freed; final norm and lm_head.
The logits equal the full model's (`Qwen3ASRForConditionalGeneration`) without ever holding it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from smt_convert.archs.qwen3_asr.config import Hparams
from smt_convert.archs.qwen3_asr.text import AUDIO, PROJ, TEXT
from smt_convert.converters.plugin import ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import build_module, streamed
from smt_convert.runtime.audio import MelParams, log_mel
from smt_convert.runtime.verify import Row

ATTENTION = "sdpa"  # what transformers picks by default for these classes on CPU
FEATURE_MAX_ABS = 1e-4  # log-mel units; measured ~8e-6 (float32 FFT differences between numpy and torch)
# HF's encoder on the runtime's features (the board's host path: its log-mel, zero-padded last chunk) vs on HF's
# processor output (its log-mel, the last chunk padded with log-mel-of-silence). Reported, not gated: the
# difference is the board's design. Measured cosine on the tiny model's 2.6 s golden: 0.9995 with the hf log-mel
# (padding only), 0.99995 with the board's (README, "Host preprocessing: board vs Hugging Face").
PROCESSOR_PATH_COSINE = 0.99
LM_HEAD_BLOCK = 16384  # vocabulary rows per float32 block of the output projection


def hf_config(hp: Hparams):
    """The transformers config the reference modules are built from (either checkpoint layout)."""
    from transformers import Qwen3ASRConfig

    audio = dict(
        num_mel_bins=hp.num_mel_bins,
        d_model=hp.d_model,
        encoder_layers=hp.encoder_layers,
        encoder_attention_heads=hp.encoder_heads,
        encoder_ffn_dim=hp.encoder_ffn_dim,
        downsample_hidden_size=hp.downsample_hidden_size,
        output_dim=hp.output_dim,
        n_window=hp.n_window,
        n_window_infer=hp.n_window_infer,
        activation_function=hp.activation,
    )
    text = dict(
        model_type="qwen3",
        vocab_size=hp.vocab_size,
        hidden_size=hp.hidden_size,
        intermediate_size=hp.intermediate_size,
        num_hidden_layers=hp.num_layers,
        num_attention_heads=hp.num_heads,
        num_key_value_heads=hp.num_kv_heads,
        head_dim=hp.head_dim,
        rms_norm_eps=hp.rms_norm_eps,
        max_position_embeddings=hp.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": hp.rope_theta},
        tie_word_embeddings=hp.tie_embeddings,
    )
    config = Qwen3ASRConfig(
        audio_config=audio, text_config=text, audio_token_id=hp.audio_token_id, tie_word_embeddings=hp.tie_embeddings
    )
    config.audio_config._attn_implementation = ATTENTION  # type: ignore[union-attr]  # transformers types sub-configs loosely (dict | config | None)
    config.text_config._attn_implementation = ATTENTION  # type: ignore[union-attr]  # as above
    return config


# ---- encoder ---------------------------------------------------------------------------------------------


def zero_padded(features: np.ndarray, hp: Hparams):
    """[mel, L] -> ([1, mel, chunks*100] with zeros after L, [1, chunks*100] mask), as the board host pads."""
    import torch

    chunk = 2 * hp.n_window
    n = features.shape[1]
    padded = np.zeros((1, features.shape[0], -(-n // chunk) * chunk), np.float32)
    padded[0, :, :n] = features
    mask = np.zeros((1, padded.shape[2]), np.int64)
    mask[0, :n] = 1
    return torch.from_numpy(padded), torch.from_numpy(mask)


def audio_features(config, load: Callable, features, mask) -> np.ndarray:
    """HF `get_audio_features` (tower, then projector) with the tower's layers streamed."""
    import copy

    import torch
    from transformers.models.qwen3_asr.modeling_qwen3_asr import (
        Qwen3ASRAudioEncoderLayer,
        Qwen3ASREncoder,
        Qwen3ASRMultiModalProjector,
    )

    audio = config.audio_config
    stem_only = copy.deepcopy(audio)
    stem_only.encoder_layers = 0  # convolutions, positions and ln_post; the layers are streamed below
    tower = build_module(lambda: Qwen3ASREncoder(stem_only), load, AUDIO)
    tower.layers = torch.nn.ModuleList(
        [
            streamed(lambda: Qwen3ASRAudioEncoderLayer(audio), load, f"{AUDIO}layers.{i}.")
            for i in range(audio.encoder_layers)
        ]
    )
    projector = build_module(lambda: Qwen3ASRMultiModalProjector(config), load, PROJ)
    with torch.no_grad():
        return projector(tower(features, mask).last_hidden_state).numpy()


# ---- text ------------------------------------------------------------------------------------------------


def text_logits(
    config, load: Callable, prompt: list[int], continuation: list[int], audio_rows: np.ndarray | None
) -> np.ndarray:
    """Logits at every position of prompt + continuation, layer by layer. The prompt's audio placeholders take
    `audio_rows`; a generated token equal to the placeholder id stays a token (as in HF's cached decoding)."""
    import torch
    from transformers.masking_utils import create_causal_mask
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm, Qwen3RotaryEmbedding

    text = config.text_config
    embedding = load(TEXT + "embed_tokens.weight")  # stored dtype; rows are made float32 where used
    ids = list(prompt) + list(continuation)
    h = embedding[torch.tensor(ids)][None].float()
    placeholders = torch.tensor([i == config.audio_token_id for i in prompt] + [False] * len(continuation))
    if audio_rows is not None:
        rows = torch.from_numpy(audio_rows)
        if int(placeholders.sum()) != rows.shape[0]:
            raise ValueError(f"{int(placeholders.sum())} audio placeholders for {rows.shape[0]} encoder rows")
        h[0, placeholders] = rows
    positions = torch.arange(len(ids))[None]
    with torch.no_grad():
        rope = build_module(lambda: Qwen3RotaryEmbedding(text), load, "")  # no parameters: inv_freq is computed
        cos_sin = rope(h, positions)
        mask = create_causal_mask(config=text, inputs_embeds=h, attention_mask=None, cache=None, position_ids=positions)
        for i in range(text.num_hidden_layers):
            layer = build_module(lambda i=i: Qwen3DecoderLayer(text, i), load, f"{TEXT}layers.{i}.")  # type: ignore[misc]  # mypy cannot infer a lambda with a default argument
            h = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
            del layer
        norm = build_module(lambda: Qwen3RMSNorm(text.hidden_size, eps=text.rms_norm_eps), load, TEXT + "norm.")
        head = embedding if text.tie_word_embeddings else load("lm_head.weight")
        return lm_head(norm(h)[0], head)


def lm_head(h, head) -> np.ndarray:
    """h @ head.T with the head made float32 a block of rows at a time (a float32 copy of a 150k-row
    vocabulary is 0.6 GB at 0.6B); every logit is still one float32 dot product over the hidden size."""
    import torch

    out = torch.empty(h.shape[0], head.shape[0])
    for start in range(0, head.shape[0], LM_HEAD_BLOCK):
        out[:, start : start + LM_HEAD_BLOCK] = h @ head[start : start + LM_HEAD_BLOCK].float().T
    return out.numpy()


# ---- the plugin's reference ------------------------------------------------------------------------------


def reference(ckpt, hp: Hparams, to_ckpt: Callable[[str], str], request: ReferenceRequest) -> ReferenceResult:
    """Encoder rows for the runtime's own features (zero-padded as the board pads), logits over prompt +
    continuation, and two family rows: the runtime's hf-path log-mel vs HF's feature extractor, and how far HF's
    processor path (its own features and padding) is from the runtime's host path (the board's, at conversion)."""
    config = hf_config(hp)

    def load(canonical: str):
        return ckpt.load(to_ckpt(canonical))

    assert request.host_input is not None  # the runtime's host path ran
    board = zero_padded(request.host_input, hp)
    processor = hf_extractor(request.media, hp)
    encoder, processor_path = audio_features_pair(config, load, board, processor)
    logits = text_logits(config, load, request.prompt_ids, request.continuation, encoder)
    hf_path = log_mel(np.asarray(request.media, dtype=np.float32), MelParams(num_mel_bins=hp.num_mel_bins))
    rows = [
        features_row(hf_path, processor[0][0, :, : int(processor[1].sum())].numpy()),
        processor_path_row(encoder, processor_path),
    ]
    return ReferenceResult(logits=logits, encoder=encoder, rows=rows, extra={"encoder_rows": int(encoder.shape[0])})


def audio_features_pair(config, load: Callable, board, processor) -> tuple[np.ndarray, np.ndarray]:
    """The encoder on both inputs ((features, mask) pairs); as one batch of two when their masks agree (HF's
    encoder packs the batch and windows each item separately), so every layer is read once."""
    import torch

    if torch.equal(board[1], processor[1]):
        both = audio_features(config, load, torch.cat([board[0], processor[0]]), torch.cat([board[1], processor[1]]))
        return both[: len(both) // 2], both[len(both) // 2 :]
    return audio_features(config, load, *board), audio_features(config, load, *processor)


def hf_extractor(wave: np.ndarray, hp: Hparams):
    """HF's `Qwen3ASRFeatureExtractor` on the raw waveform: features and frame mask, cut after the last chunk
    holding a valid frame (HF pads to 30 s; chunks without valid frames give the encoder no rows)."""
    from transformers import Qwen3ASRFeatureExtractor

    fe = Qwen3ASRFeatureExtractor(feature_size=hp.num_mel_bins, n_window=hp.n_window)
    out = fe(wave, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    chunk = 2 * hp.n_window
    end = -(-int(out["attention_mask"].sum()) // chunk) * chunk
    return out["input_features"][:, :, :end], out["attention_mask"][:, :end].long()


def features_row(ours: np.ndarray, hf: np.ndarray) -> Row:
    """The runtime's Hugging Face-faithful log-mel (the hf host path) vs HF's feature extractor."""
    if ours.shape != hf.shape:
        return Row("features", "shape", f"{list(ours.shape)} vs {list(hf.shape)}", "equal", False)
    diff = float(np.max(np.abs(ours - hf)))
    return Row("features", "hf path max abs vs HF extractor", diff, f"<= {FEATURE_MAX_ABS:g}", diff <= FEATURE_MAX_ABS)


def processor_path_row(runtime_path: np.ndarray, processor_path: np.ndarray) -> Row:
    """HF's encoder on the runtime's host path (features and zero-padded last chunk) vs on HF's processor path.
    The board keeps one more frame for some clip lengths (one more row for whole seconds): then the rows both
    have are compared."""
    n = min(runtime_path.shape[0], processor_path.shape[0])
    if n == 0 or runtime_path.shape[1:] != processor_path.shape[1:]:
        return Row(
            "encoder vs HF processor",
            "shape",
            f"{list(runtime_path.shape)} vs {list(processor_path.shape)}",
            "comparable",
            False,
        )
    a, b = runtime_path[:n].astype(np.float64).ravel(), processor_path[:n].astype(np.float64).ravel()
    c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rows = (
        ""
        if runtime_path.shape == processor_path.shape
        else f", first {n} of {runtime_path.shape[0]} vs {processor_path.shape[0]} rows"
    )
    return Row(
        "encoder vs HF processor",
        f"cosine (host path{rows})",
        c,
        f"info; typically >= {PROCESSOR_PATH_COSINE}",
        True,
        gate=False,
    )
