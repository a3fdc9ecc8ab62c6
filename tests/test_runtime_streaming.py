"""The streaming weight store (runtime/weights.py) and the quantised matmul (runtime/qmatmul.py).

- MatMulNBits operands built from Q8_0 / Q4_0 blocks dequantise to exactly gguf's float32 weights, and the
  ONNX Runtime product equals numpy's float32 product on dequantised weights up to summation order;
- the memory budget decides what is kept (packed / float32) or streamed, never changes the logits, and is
  never exceeded;
- memory per forward does not grow with the number of layers; embedding lookups and a streamed output
  projection never materialise the whole table (measured with tracemalloc, which sees numpy's buffers).
No timing here: speed is benchmarks/bench_runtime.py's business.
"""

import tracemalloc

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from smt_convert.runtime import qmatmul, weights
from smt_convert.runtime.decoders import load_decoder
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.weights import WeightStore, parse_bytes
from smt_convert.testing.random_gguf import write_random_qwen3vl

needs_qmm = pytest.mark.skipif(not qmatmul.available(), reason="onnxruntime without CPU MatMulNBits")

SIZES = dict(hidden=64, n_head=4, n_kv=2, head_dim=16, ff=96, vocab=512)


def write_gguf(path, n_layer: int, qtype=Q.Q8_0, tied=True, seed=0):
    """Random qwen3vl GGUF (no tokenizer: the numpy runtime does not need one)."""
    return write_random_qwen3vl(path, SIZES, n_layer, qtype.name, tied=tied, seed=seed)


IDS = [5, 77, 300, 12, 511, 0, 42]


def logits(dec, ids=IDS):
    return dec.forward(dec.embed(ids), np.arange(len(ids)), dec.new_cache())


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def q8_path(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("s") / "q8.gguf", n_layer=3)


# ---- the lean GGUF parser -------------------------------------------------------------------------------


def test_parser_agrees_with_gguf_reader(tmp_path):
    """GGUFModel's own header parser reads every key and tensor exactly as gguf.GGUFReader does."""
    path = tmp_path / "p.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "testarch")
    w.add_token_list(["a", "ĠĠ", "", "ç😀"])
    w.add_token_merges(["Ġ Ġ"])
    w.add_array("testarch.floats", [0.5, -1.25])
    w.add_array("testarch.bools", [True, False])
    w.add_uint64("testarch.big", 1 << 40)
    w.add_int32("testarch.neg", -7)
    w.add_float64("testarch.f64", 1e-300)
    w.add_bool("testarch.flag", False)
    w.add_tensor("f32", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 5, 32)).astype(np.float16))
    for qt in (Q.Q8_0, Q.Q4_1, Q.BF16):
        w.add_tensor(qt.name, gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    m, r = GGUFModel(path), gguf.GGUFReader(str(path))
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        assert m.meta(key) == expected, key
        assert type(m.meta(key)) is type(expected), key
    for t in r.tensors:
        data, qtype = m.raw(t.name)
        assert qtype == t.tensor_type and data.dtype == t.data.dtype
        np.testing.assert_array_equal(data, t.data)
        assert m.tensor_shape(t.name) == tuple(int(d) for d in reversed(t.shape.tolist()))

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SmtError, match=r"cut\.gguf: not a readable GGUF file \(tensor BF16 runs past the end"):
        GGUFModel(cut)


# ---- quantised matmul ---------------------------------------------------------------------------------


def unpack_matmulnbits(B, S, Z, N, K_inner):
    """MatMulNBits' documented dequantisation, in numpy: (nibble - zero point) * scale, blockwise."""
    nb = K_inner // 32
    vals = np.stack([B & 15, B >> 4], axis=-1).reshape(N, nb, 32).astype(np.float32)
    if Z is None:
        zp = np.full((N, nb), 8, np.float32)
    else:
        zp = np.stack([Z & 15, Z >> 4], axis=-1).reshape(N, -1)[:, :nb].astype(np.float32)
    return ((vals - zp[..., None]) * S.reshape(N, nb, 1)).reshape(N, K_inner)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
@pytest.mark.parametrize("N,K", [(5, 32), (7, 96), (64, 256)])
def test_matmulnbits_operands_dequantise_exactly(qtype, N, K):
    """Every weight the kernel sees is bit-identical to gguf's dequantisation (the Q8_0 hi/lo split too)."""
    rng = np.random.default_rng(N * K)
    raw = gguf.quants.quantize((rng.standard_normal((N, K)) * 3).astype(np.float32), qtype)
    ref = gguf.quants.dequantize(raw, qtype).reshape(N, K)
    B, S, Z, dup, bits = qmatmul.to_matmulnbits(raw, qtype, K)
    assert bits == 4
    w = unpack_matmulnbits(B, S, Z, N, 2 * K if dup else K)
    if dup:  # [x, x] @ [W_hi | W_lo]^T: each half dequantises exactly, and so does their sum
        w = w[:, :K] + w[:, K:]
    np.testing.assert_array_equal(w, ref)
    assert qmatmul.packed_nbytes(qtype, N, K) == B.nbytes + S.nbytes + (Z.nbytes if Z is not None else 0)


@needs_qmm
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_quant_matmul_equals_float32_matmul(qtype, monkeypatch):
    """ORT's product = numpy float32 product on dequantised weights, to float32 summation-order error
    (measured <= 2e-6 relative); stacked parts and several row slabs are joined in order."""
    monkeypatch.setattr(qmatmul, "SLAB_WEIGHTS", 40 * 256)  # 40 rows per session: several slabs
    rng = np.random.default_rng(1)
    K = 256
    parts = [gguf.quants.quantize(rng.standard_normal((n, K)).astype(np.float32), qtype) for n in (100, 37)]
    W = np.concatenate([gguf.quants.dequantize(p, qtype).reshape(-1, K) for p in parts])
    mm = qmatmul.QuantMatMul(parts, qtype, K, threads=1)
    assert len(mm.sessions) == 3 + 1
    for M in (1, 9):
        x = rng.standard_normal((M, K)).astype(np.float32)
        y = mm(x)
        assert y.shape == (M, 137) and y.dtype == np.float32
        assert rel(y, x @ W.T) < 1e-5


@needs_qmm
def test_int8_mode_is_opt_in_and_close(q8_path, monkeypatch):
    """SMT_RUNTIME_QMATMUL=int8: Q8_0 kept 8-bit (1.125 bytes/weight), activations quantised by the kernel:
    close to, but not equal to, the float32 result; the default stays exact."""
    exact = load_decoder(GGUFModel(q8_path))
    assert exact.weights.quant_matmul == "exact"
    monkeypatch.setenv(weights.ENV_QMATMUL, "int8")
    fast = load_decoder(GGUFModel(q8_path))
    assert fast.weights.quant_matmul == "int8"
    ref, got = logits(exact), logits(fast)
    err = float(((got - ref) ** 2).sum() / (ref ** 2).sum())
    assert 0 < err < 4e-3, err  # measured NMSE 4.2e-4 (max |diff| 2.2% of the logit scale)
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    K = SIZES["hidden"]
    assert qmatmul.packed_nbytes(Q.Q8_0, 10, K, "int8") == 10 * K * 9 // 8
    monkeypatch.setenv(weights.ENV_QMATMUL, "fastest")
    with pytest.raises(SmtError, match="SMT_RUNTIME_QMATMUL"):
        load_decoder(GGUFModel(q8_path))


# ---- budget -------------------------------------------------------------------------------------------


def test_parse_bytes():
    assert parse_bytes("768M") == 768 << 20
    assert parse_bytes("1.5g") == 3 << 29
    assert parse_bytes("2GiB") == 2 << 30
    assert parse_bytes(12345) == 12345 and parse_bytes("0") == 0
    with pytest.raises(SmtError, match="SMT_RUNTIME_MEMORY_BUDGET"):
        parse_bytes("lots")


def test_budget_from_environment(q8_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_BUDGET, "3M")
    assert load_decoder(GGUFModel(q8_path)).weights.budget == 3 << 20
    assert load_decoder(GGUFModel(q8_path), budget=1000).weights.budget == 1000  # argument wins
    monkeypatch.delenv(weights.ENV_BUDGET)
    assert load_decoder(GGUFModel(q8_path)).weights.budget == weights.DEFAULT_BUDGET


@needs_qmm
def test_budget_decides_the_form_never_the_logits(q8_path):
    """Fully packed, fully float32, partly cached and fully streamed decoders give the same logits;
    what is held never exceeds the budget."""
    packed = load_decoder(GGUFModel(q8_path), budget="1G")
    ref = logits(packed)
    store = packed.weights
    assert set(store.kinds) == {"quant_matmul"} and 0 < store.cached_bytes <= store.budget

    float32 = load_decoder(GGUFModel(q8_path), budget="1G")
    float32.weights.quant_matmul = None
    assert rel(logits(float32), ref) < 1e-5
    assert set(float32.weights.kinds) == {"cached_f32"}
    total_f32 = float32.weights.cached_bytes

    streamed = load_decoder(GGUFModel(q8_path), budget=0)
    assert np.array_equal(logits(streamed), logits(streamed))  # stateless between calls
    assert rel(logits(streamed), ref) < 1e-5
    assert set(streamed.weights.kinds) == {"streamed"} and streamed.weights.cached_bytes == 0

    part = load_decoder(GGUFModel(q8_path), budget=total_f32 // 3)
    part.weights.quant_matmul = None
    assert rel(logits(part), ref) < 1e-5
    assert set(part.weights.kinds) == {"cached_f32", "streamed"}
    assert 0 < part.weights.cached_bytes <= total_f32 // 3


def test_f32_weights_are_used_in_place(tmp_path):
    """F32 tensors are multiplied straight from the mapping: nothing is charged or copied."""
    dec = load_decoder(GGUFModel(write_gguf(tmp_path / "f32.gguf", n_layer=2, qtype=Q.F32)), budget=0)
    logits(dec)
    assert set(dec.weights.kinds) == {"mapped_f32"} and dec.weights.cached_bytes == 0


def test_f16_weights_are_multiplied_from_the_mapping(tmp_path):
    """F16 tensors go through onnxruntime's Cast + Gemm on the mapped file: nothing charged, and the logits equal
    the float32 path's (dequantising f16 is exact, so only the summation order differs)."""
    path = write_gguf(tmp_path / "f16.gguf", n_layer=2, qtype=Q.F16)
    mapped = load_decoder(GGUFModel(path), budget=0)
    ours = logits(mapped)
    assert set(mapped.weights.kinds) == {"mapped_f16"} and mapped.weights.cached_bytes == 0
    numpy_path = load_decoder(GGUFModel(path), budget="1G")
    numpy_path.weights.quant_matmul = None
    ref = logits(numpy_path)
    assert set(numpy_path.weights.kinds) == {"cached_f32"}
    assert rel(ours, ref) < 1e-6


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.F16])
def test_embedding_rows_without_the_table(tmp_path, qtype):
    """Lookups dequantise only the rows asked for, whatever the type; the tied head is the same object."""
    path = write_gguf(tmp_path / "e.gguf", n_layer=1, qtype=qtype)
    dec = load_decoder(GGUFModel(path), budget=0)
    assert dec.output is dec.token_embd
    table = GGUFModel(path).tensor("token_embd.weight")
    tracemalloc.start()
    rows = dec.embed(IDS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(rows, table[IDS])
    assert peak < table.nbytes / 4, peak  # 7 rows of 512 (+ gguf's dequantisation temporaries)
    with pytest.raises(SmtError, match="out of range"):
        dec.embed([SIZES["vocab"]])


def test_streamed_output_projection_works_in_slabs(q8_path, monkeypatch):
    """With nothing cached, the [vocab, hidden] head is dequantised a slab of rows at a time."""
    monkeypatch.setattr(weights, "STREAM_ELEMS", 16 * SIZES["hidden"])  # 16 of 512 rows per slab
    dec = load_decoder(GGUFModel(q8_path), budget=0)
    x = np.random.default_rng(0).standard_normal((1, SIZES["hidden"])).astype(np.float32)
    table = GGUFModel(q8_path).tensor("token_embd.weight")
    tracemalloc.start()
    y = dec.output(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rel(y, x @ table.T) < 1e-5
    assert peak < table.nbytes / 4, (peak, table.nbytes)


@pytest.mark.parametrize("budget", [0, "1G"])
def test_forward_memory_does_not_grow_with_layers(tmp_path, budget):
    """Peak traced allocation of a decode step is the same for 2 and 8 layers (the KV cache, allocated
    before tracing, is the only per-layer state); numpy paths only, so tracemalloc sees everything."""
    peaks = {}
    for n_layer in (2, 8):
        dec = load_decoder(GGUFModel(write_gguf(tmp_path / f"l{n_layer}.gguf", n_layer=n_layer)), budget=budget)
        dec.weights.quant_matmul = None
        cache = dec.new_cache()
        dec.forward(dec.embed(IDS), np.arange(len(IDS)), cache)  # builds (and, with a budget, caches) weights
        tracemalloc.start()
        dec.forward(dec.embed([3]), np.array([len(IDS)]), cache, logits="last")
        peaks[n_layer] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if budget == 0:
            assert dec.weights.cached_bytes == 0
    assert peaks[8] < 1.25 * peaks[2] + 16384, peaks


def test_cached_bytes_bounded_as_layers_grow(tmp_path):
    """A budget smaller than the model: the kept weights stop at the budget, the rest is streamed."""
    budget = 200_000
    for n_layer in (2, 8):
        dec = load_decoder(GGUFModel(write_gguf(tmp_path / f"c{n_layer}.gguf", n_layer=n_layer)), budget=budget)
        dec.weights.quant_matmul = None
        logits(dec)
        assert dec.weights.cached_bytes <= budget
    assert dec.weights.kinds.get("streamed", 0) > 0


def test_experts_dequantise_only_selected_slices(tmp_path):
    """A 3-D expert tensor: expert e's Linear is built on first use and charges one slice."""
    E, F, H = 6, 48, 64
    rng = np.random.default_rng(0)
    data = rng.standard_normal((E, F, H)).astype(np.float32)
    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "testarch")
    w.add_tensor("blk.0.ffn_up_exps.weight", gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    store = WeightStore(GGUFModel(path), budget="1G")
    experts = store.experts("blk.0.ffn_up_exps.weight", E, F, H)
    x = rng.standard_normal((3, H)).astype(np.float32)
    ref = gguf.quants.dequantize(gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0).reshape(E, F, H)
    assert rel(experts[4](x), x @ ref[4].T) < 1e-6
    assert store.cached_bytes == F * H * 4 and store.kinds == {"cached_f32": 1}
    with pytest.raises(SmtError, match="shape"):
        store.experts("blk.0.ffn_up_exps.weight", E, H, F)


@needs_qmm
def test_quantised_decoder_matches_dequantised_reference(q8_path):
    """End to end: the packed decoder equals a decoder on float32 copies of the same weights."""
    a = load_decoder(GGUFModel(q8_path))
    b = load_decoder(GGUFModel(q8_path))
    b.weights.quant_matmul = None
    ids = list(range(40, 90))
    la, lb = logits(a, ids), logits(b, ids)
    assert rel(la, lb) < 1e-5
    assert np.array_equal(la.argmax(-1), lb.argmax(-1))


def test_hand_written_matmulnbits_model_is_valid_onnx():
    """The runtime writes its one-node MatMulNBits models without the onnx package (a board has only
    onnxruntime); the onnx package itself must read the bytes back as a valid model with the same weights."""
    onnx = pytest.importorskip("onnx")
    from smt_convert.runtime import qmatmul

    rng = np.random.default_rng(0)
    K, N = 64, 48
    blob = rng.integers(0, 256, size=(N, K // 32, 16), dtype=np.uint8)
    scales = rng.normal(size=(N * (K // 32),)).astype(np.float32)
    for duplicate in (False, True):
        model = onnx.load_from_string(qmatmul.matmulnbits_model(K, N, blob, scales, None, duplicate))
        onnx.checker.check_model(model)
        node = model.graph.node[-1]
        assert (node.op_type, node.domain) == ("MatMulNBits", "com.microsoft")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["N"] == N and attrs["K"] == (2 * K if duplicate else K) and attrs["block_size"] == 32
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert any(np.array_equal(w.reshape(-1), blob.reshape(-1)) for w in weights.values())
