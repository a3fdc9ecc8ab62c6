"""The board table (converters/boards.py) and the memory arithmetic (converters/memory.py).

The table's facts are checked against what its sources say (K1 accelerates exactly Q4_0/Q4_1/Q4_K) and against
the rest of smt-convert (a default type it can write, `ep_config` keys the board runtime reads). The memory
arithmetic is checked against an independent count: llama.cpp (llama-cpp-python) reports the buffers it
allocates when it creates a context (`llama_kv_cache: size`, `llama_memory_recurrent: size`, `compute buffer
size`, `output buffer size`), captured through `llama_log_set`. KV cache, recurrent state and output buffer
must agree within 1%; the compute buffer is an estimate, held to the band measured below.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
from pathlib import Path

import gguf
import pytest

from smt_convert.converters import boards as B
from smt_convert.converters import memory as M
from smt_convert.testing.random_gguf import byte_level_tokens, write_random_qwen3vl

MiB = 1 << 20

# Compute buffer, estimate vs llama.cpp (llama-cpp-python 0.3.36), measured over 192 configurations (qwen3vl and
# qwen35 at tiny widths and at Qwen3-ASR-0.6B's widths, n_ctx 512-32768, flash attention on/off, 1 and 4
# sequences): never more than 0.7% below, and above by at most the attention mask (T x n_ctx x 2 or 4 bytes)
# plus 3 x T x n_embd floats. ggml's allocator sometimes reuses the hole the mask leaves for the logits and
# sometimes places the logits after it; the estimate always counts the mask, so it errs high. Relative to the
# buffer that is -0.7% ... +42% at tiny widths (a few MiB) and -0.7% ... +13% at 0.6B widths. With flash
# attention off and a long context the attention scores dominate and the estimate is within 0.2%.
# (A qwen35moe tiny model, not tested here: -7.4% ... +20%.)
COMPUTE_BELOW = 0.02        # the estimate may be this much below llama.cpp's figure
COMPUTE_ABOVE_ACTS = 3      # ... and above it by the mask + this many T x n_embd float activations
SCORES_DOMINATED = 0.01
EXACT = 0.01  # KV cache, recurrent state: llama.cpp prints MiB with two decimals, sizes here are >= 0.8 MiB

QWEN3VL = dict(hidden=256, n_head=4, n_kv=2, head_dim=64, ff=512, vocab=2048)
QWEN3VL_WIDE_VOCAB = dict(hidden=512, n_head=4, n_kv=4, head_dim=128, ff=1024, vocab=32768)




def qwen3vl_gguf(path: Path, sizes=QWEN3VL, n_layer: int = 2, qtype: str = "f16", context: int = 32768) -> Path:
    return write_random_qwen3vl(path, sizes, n_layer, qtype, context=context, tokens=byte_level_tokens(sizes["vocab"]))


# ---- the board table ----------------------------------------------------------------------------------------


def test_k1_accelerates_exactly_the_4bit_ime1_types():
    k1 = B.profile("k1")
    assert k1.accelerated_types == {"Q4_0", "Q4_1", "Q4_K"}
    assert [t for t in ("Q4_0", "q4_1", "Q4_K") if B.accelerated("k1", t)] == ["Q4_0", "q4_1", "Q4_K"]
    for t in ("Q8_0", "Q5_0", "Q5_1", "Q6_K", "F16", "F32", "BF16"):
        assert not B.accelerated(k1, t), t


def test_k3_accelerates_the_a100_list():
    k3 = B.profile("K3")
    assert k3.accelerated_types == {"Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"}
    assert B.profile("k1").accelerated_types < k3.accelerated_types
    assert not B.accelerated("k3", "F16")
    assert B.accelerated("host", "F16") and B.accelerated("host", "Q8_0")


def test_board_facts():
    k1, k3, host = B.profile("k1"), B.profile("k3"), B.profile("host")
    assert k1.memory_gb == (2, 4, 8, 16) and k1.cores == 8 and k1.ai_cores == (0, 1, 2, 3)
    assert 32 in k3.memory_gb and k3.cores == 16 and k3.ai_cores == tuple(range(8, 16))
    assert k1.llama_threads == k1.ort_intra_threads == 4 and k3.llama_threads == k3.ort_intra_threads == 8
    assert (k1.encoder_dtype, k1.vision_encoder_dtype) == ("int8", "fp16")
    assert host.ep_config() == {} and host.memory_gb == ()
    assert set(B.BOARDS) == {"k1", "k3", "host"}


def test_defaults_are_writable_and_accelerated():
    from smt_convert.converters.text_gguf import OUTTYPES

    for board in B.BOARDS.values():
        assert board.default_text_type in OUTTYPES, board.name
        assert B.accelerated(board, OUTTYPES[board.default_text_type][0].name), board.name
        assert {board.encoder_dtype, board.vision_encoder_dtype} <= {"fp32", "fp16", "int8"}


def test_ep_config_uses_the_contract_keys():
    contract = {"SPACEMIT_EP_INTRA_THREAD_NUM", "SPACEMIT_EP_INTER_THREAD_NUM", "SPACEMIT_EP_INTRA_THREAD_AFFINITY"}
    for name in ("k1", "k3"):
        board = B.profile(name)
        config = board.ep_config()
        assert set(config) <= contract and all(isinstance(v, str) for v in config.values())
        assert int(config["SPACEMIT_EP_INTRA_THREAD_NUM"]) == board.ort_intra_threads
        pinned = [int(c) for c in config["SPACEMIT_EP_INTRA_THREAD_AFFINITY"].split(";")]
        assert len(pinned) == board.ort_intra_threads and set(pinned) <= set(board.ai_cores)
        assert all(0 <= c < board.cores for c in pinned)


def test_unknown_board_and_type():
    with pytest.raises(KeyError, match="unknown board"):
        B.profile("k2")
    with pytest.raises(ValueError, match="not a ggml type"):
        B.accelerated("k1", "Q4_K_M")  # a llama-quantize file type, not a ggml type


# ---- memory arithmetic, without llama.cpp --------------------------------------------------------------------


def test_shape_and_weights_from_the_header(tmp_path):
    path = qwen3vl_gguf(tmp_path / "m.gguf", qtype="q8_0")
    s = M.read_text_shape(path)
    assert (s.arch, s.n_layer, s.n_embd, s.n_vocab, s.n_head, s.key_length) == ("qwen3vl", 2, 256, 2048, 4, 64)
    assert s.n_head_kv == (2, 2) and s.attention_layers == [0, 1] and s.recurrent_layers == []
    # an independent count of the tensor bytes: gguf-py's own reader
    assert s.weights_bytes == sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
    # F16 cache: n_layer x cells x (K + V) x 2 bytes; n_ctx padded to 256 as llama.cpp does
    assert M.kv_cache_bytes(s, 1000) == 2 * 1024 * (2 * 64 + 2 * 64) * 2
    assert M.kv_cache_bytes(s, 4096, type_k="q8_0", type_v="q8_0") == 2 * 4096 * 2 * (128 // 32 * 34)
    assert M.recurrent_state_bytes(s) == 0


def _hybrid_header(path: Path, with_layer_list: bool, nextn: int = 0) -> Path:
    """A qwen35 header with the keys llama.cpp's loader reads for the layer kinds (one tiny tensor)."""
    import numpy as np

    w = gguf.GGUFWriter(str(path), "qwen35")
    n = 8 + nextn
    w.add_block_count(n)
    w.add_uint32("qwen35.nextn_predict_layers", nextn)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(32)
    w.add_value_length(32)
    for key, value in (("conv_kernel", 4), ("inner_size", 64), ("state_size", 16), ("group_count", 2),
                       ("time_step_rank", 4)):
        w.add_uint32(f"qwen35.ssm.{key}", value)
    if with_layer_list:
        w.add_array("qwen35.attention.recurrent_layers", [True, False] * 4 + [False] * nextn)
    else:
        w.add_uint32("qwen35.full_attention_interval", 4)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_hybrid_layers_follow_llama_cpp(tmp_path):
    s = M.read_text_shape(_hybrid_header(tmp_path / "interval.gguf", with_layer_list=False))
    assert s.attention_layers == [3, 7]                      # (il + 1) % 4 == 0: full attention
    assert s.recurrent_layers == [0, 1, 2, 4, 5, 6]
    s = M.read_text_shape(_hybrid_header(tmp_path / "list.gguf", with_layer_list=True))
    assert s.attention_layers == [1, 3, 5, 7]
    s = M.read_text_shape(_hybrid_header(tmp_path / "mtp.gguf", with_layer_list=False, nextn=1))
    assert (s.n_layer, s.n_layer_all) == (8, 9) and s.attention_layers == [3, 7]  # the MTP layer has no KV here
    # conv state (d_conv - 1) x (d_inner + 2 n_group d_state) + ssm state d_state x d_inner, F32, per sequence
    per_layer = (3 * (64 + 2 * 2 * 16) + 16 * 64) * 4
    assert M.recurrent_state_bytes(s, n_seq=3) == 6 * 3 * per_layer
    assert M.kv_cache_bytes(s, 512) == 2 * 512 * (2 * 32 * 2) * 2


def test_fits_picks_the_longest_context_that_fits():
    GB = M.GiB

    def budget(n_ctx):  # 1 GiB fixed + 100 KiB per token
        return GB + n_ctx * 100 * 1024

    reserve = M.OS_RESERVE_BYTES
    got = M.fits(budget, [1, 2, 4, 16], max_ctx=32768)
    assert got[1] is None                                     # 1 GiB - reserve < 1 GiB fixed
    for gb, n_ctx in got.items():
        if n_ctx is not None:
            assert budget(n_ctx) <= gb * GB - reserve
            assert n_ctx == 32768 or budget(n_ctx * 2) > gb * GB - reserve
    assert got[16] == 32768                                   # capped at max_ctx
    assert got[2] == 2048 and got[4] == 16384
    assert M.fits(budget, [4], os_reserve_bytes=0)[4] == 16384
    assert M.fits(budget, [64])[64] == max(M.CONTEXTS)        # no cap: the longest candidate


def test_budget_adds_up(tmp_path):
    path = qwen3vl_gguf(tmp_path / "m.gguf")
    b = M.text_memory(path, 2000, encoder_peak_bytes=300 * MiB)
    assert b.n_ctx == 2048 and b.encoder == 300 * MiB and b.overhead == M.RUNTIME_OVERHEAD_BYTES
    assert b.total == sum((b.weights, b.kv_cache, b.recurrent_state, b.compute, b.output, b.encoder, b.overhead))
    assert M.text_memory(path, 8192, flash_attn=False).compute > M.text_memory(path, 8192).compute
    fit = M.bundle_fits(path, B.profile("k1").memory_gb, encoder_peak_bytes=300 * MiB)
    assert fit[2] is not None and fit[16] == 32768            # a tiny model: up to its context_length


# ---- against llama.cpp --------------------------------------------------------------------------------------


@contextlib.contextmanager
def llama_log(llama_cpp):
    """Everything llama.cpp logs meanwhile, as text; llama-cpp-python's own logger is put back after."""
    import llama_cpp._logger as default

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(default.llama_log_callback, ctypes.c_void_p(0))


def llama_reports(llama_cpp, path: Path, n_ctx: int, n_seq: int = 1, flash_attn: bool = False,
                  kv_unified: bool = False) -> dict[str, float]:
    """The sizes (MiB) llama.cpp reports when it creates a context for `path`."""
    llama_cpp.llama_backend_init()
    with llama_log(llama_cpp) as lines:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        assert model, "".join(lines)[-2000:]
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, 512, 512, n_seq
        params.flash_attn_type = 1 if flash_attn else 0          # LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED
        params.kv_unified = kv_unified
        params.n_threads = params.n_threads_batch = 1
        ctx = llama_cpp.llama_init_from_model(model, params)
        assert ctx, "".join(lines)[-2000:]
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    text = "".join(lines)
    found = {}
    for key, pattern in (("kv", r"llama_kv_cache: size = +([\d.]+) MiB"),
                         ("recurrent", r"llama_memory_recurrent: size = +([\d.]+) MiB"),
                         ("compute", r"CPU compute buffer size = +([\d.]+) MiB"),
                         ("output", r"CPU +output buffer size = +([\d.]+) MiB")):
        m = re.search(pattern, text)
        found[key] = float(m.group(1)) if m else 0.0
    assert found["compute"] > 0, text[-2000:]
    return found


def check_against_llama(llama_cpp, path: Path, n_ctx: int, n_seq: int = 1, flash_attn: bool = False,
                        kv_unified: bool = False) -> dict:
    rep = llama_reports(llama_cpp, path, n_ctx, n_seq, flash_attn, kv_unified)
    est = M.text_memory(path, n_ctx, n_seq, flash_attn=flash_attn, kv_unified=kv_unified)
    case = f"{path.name} n_ctx={n_ctx} n_seq={n_seq} fa={flash_attn} unified={kv_unified}: {rep}"
    assert est.kv_cache / MiB == pytest.approx(rep["kv"], rel=EXACT, abs=0.006), case
    assert est.recurrent_state / MiB == pytest.approx(rep["recurrent"], rel=EXACT, abs=0.006), case
    assert est.output / MiB == pytest.approx(rep["output"], abs=0.006), case
    err = est.compute / MiB / rep["compute"] - 1
    cells, streams = M.kv_cells(n_ctx, n_seq, kv_unified)
    tokens = min(cells * streams, M.DEFAULT_UBATCH)
    mask = tokens * cells * (2 if flash_attn else 4)
    above = mask + COMPUTE_ABOVE_ACTS * tokens * M.read_text_shape(path).n_embd * 4 + 0.01 * MiB
    message = f"{case}: compute estimate {est.compute / MiB:.2f} MiB ({err:+.1%})"
    assert err >= -COMPUTE_BELOW, message
    assert est.compute - rep["compute"] * MiB <= above, message
    return {"est": est, "rep": rep, "err": err}


@pytest.mark.llama_cpp
@pytest.mark.parametrize("sizes", [QWEN3VL, QWEN3VL_WIDE_VOCAB], ids=["small-vocab", "wide-vocab"])
def test_dense_model_against_llama_cpp(tmp_path, sizes):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = qwen3vl_gguf(tmp_path / "dense.gguf", sizes)
    for n_ctx in (1000, 4096, 8192):
        for flash_attn in (False, True):
            check_against_llama(llama_cpp, path, n_ctx, flash_attn=flash_attn)
    check_against_llama(llama_cpp, path, 4096, n_seq=4, flash_attn=True)                  # 4 streams of 1024
    check_against_llama(llama_cpp, path, 4096, n_seq=4, flash_attn=True, kv_unified=True)
    # with flash attention off and a long context the attention scores dominate: the estimate is exact there
    r = check_against_llama(llama_cpp, path, 8192, flash_attn=False)
    if sizes is QWEN3VL:
        assert abs(r["err"]) <= SCORES_DOMINATED, r


@pytest.fixture(scope="module")
def hybrid_gguf(tmp_path_factory) -> Path:
    """A qwen35 text GGUF (8 layers: Gated-DeltaNet x3 + full attention, twice), written by our converter's
    Qwen3.5 text writer from a random transformers model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from smt_convert.archs.qwen3_5 import config as C
    from smt_convert.archs.qwen3_5 import text as T
    from smt_convert.archs.qwen3_5.plugin import Qwen35Plugin
    from smt_convert.converters.text_gguf import write_text_gguf
    from smt_convert.converters.tokenizer import build_bpe_vocab, find_tokenizer, write_vocab
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer

    directory = tmp_path_factory.mktemp("qwen35")
    build_qwen_bpe_tokenizer(directory)
    rules = Qwen35Plugin.tokens
    vocab = build_bpe_vocab(find_tokenizer(directory), 4096, rules.pre, eot_token=rules.eot, eos_token=rules.eos)
    config = transformers.Qwen3_5TextConfig(
        vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, intermediate_size=512, linear_conv_kernel_dim=4, linear_key_head_dim=64,
        linear_value_head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(8)],
        full_attention_interval=4, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [3, 3, 2], "mrope_interleaved": True})
    torch.manual_seed(0)
    model = transformers.Qwen3_5ForCausalLM(config).eval()
    hp = C.read_text_hparams(json.loads(model.config.to_json_string()), Path("config.json"))
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    tensors = T.text_tensors(hp, prefix=C.CAUSAL_PREFIX)

    def metadata(writer):
        T.write_text_metadata(writer, hp)
        write_vocab(writer, vocab)

    path = directory / "text-f16.gguf"
    write_text_gguf(path, hp.gguf_arch, tensors, T.text_tensor_types(tensors, "f16"), lambda n: state[n], metadata)
    return path


def test_hybrid_shape(hybrid_gguf):
    s = M.read_text_shape(hybrid_gguf)
    assert s.arch == "qwen35" and s.attention_layers == [3, 7] and len(s.recurrent_layers) == 6
    assert (s.ssm_d_conv, s.ssm_d_inner, s.ssm_d_state, s.ssm_n_group, s.ssm_dt_rank) == (4, 512, 64, 4, 8)


@pytest.mark.llama_cpp
def test_hybrid_model_against_llama_cpp(hybrid_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    for n_ctx in (2048, 8192):
        for n_seq in (1, 4):
            for flash_attn in (False, True):
                check_against_llama(llama_cpp, hybrid_gguf, n_ctx, n_seq, flash_attn)
    r = check_against_llama(llama_cpp, hybrid_gguf, 8192, 1, flash_attn=False)
    assert abs(r["err"]) <= SCORES_DOMINATED, r
    # only the two attention layers hold KV: 2 x 8192 x (2 x 64 K + 2 x 64 V) x 2 bytes = 8 MiB
    assert r["rep"]["kv"] == pytest.approx(8.0, abs=0.006)


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_real_widths_against_llama_cpp(tmp_path):
    """Qwen3-ASR-0.6B's text widths and vocabulary (2 of its 28 layers): the logits dominate."""
    llama_cpp = pytest.importorskip("llama_cpp")
    sizes = dict(hidden=1024, n_head=16, n_kv=8, head_dim=128, ff=3072, vocab=151936)
    path = qwen3vl_gguf(tmp_path / "asr.gguf", sizes, qtype="q8_0", context=65536)
    for n_ctx, flash_attn in ((512, True), (8192, True), (8192, False), (32768, False)):
        check_against_llama(llama_cpp, path, n_ctx, flash_attn=flash_attn)
