"""Architecture-blind pieces of conversion: output safety, the encoder writer's contract checks, and the
teacher-forced greedy comparison that replaces `generate` in the streamed reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from smt_convert.converters.output import PARTIAL_MARKER, claim_output, release, sweep_partials
from smt_convert.converters.onnx_graph import EncoderGraph, GraphContext, Weights, layer_norm, linear
from smt_convert.converters.onnx_write import write_encoder
from smt_convert.converters.plugin import ReferenceResult
from smt_convert.converters.reference import ReferenceCache, reference_tokens
from smt_convert.runtime.errors import SmtError

# ---- output directory safety ------------------------------------------------------------------------


def test_force_never_replaces_a_directory_we_did_not_write(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    for force in (False, True):
        with pytest.raises(SmtError, match="not an smt-convert bundle.*holiday.jpg"):
            claim_output(out, force)
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    assert not list(tmp_path.glob(".photos.*"))


def test_a_manifest_from_another_tool_is_not_a_bundle(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"tool": {"name": "something-else"}}))
    with pytest.raises(SmtError, match="not an smt-convert bundle"):
        claim_output(out, force=True)


def test_a_claim_makes_a_marked_temporary_directory(tmp_path):
    claim = claim_output(tmp_path / "new", force=False)
    try:
        assert claim.tmp.is_dir() and (claim.tmp / PARTIAL_MARKER).read_text().strip() == str(os.getpid())
    finally:
        release(claim)
    assert not list(tmp_path.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_our_partials_of_dead_runs(tmp_path):
    dead = tmp_path / ".out.partial-dead"
    dead.mkdir()
    (dead / PARTIAL_MARKER).write_text(f"{_dead_pid()}\n")
    (dead / "model.gguf").write_bytes(b"x" * 100)
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    (live / PARTIAL_MARKER).write_text(f"{os.getppid()}\n")
    foreign = tmp_path / ".out.partial-foreign"      # same name pattern, not ours: no marker
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    other = tmp_path / ".other.partial-dead"         # another output's partial
    other.mkdir()
    (other / PARTIAL_MARKER).write_text(f"{_dead_pid()}\n")
    sweep_partials(tmp_path, "out")
    assert not dead.exists()
    assert live.is_dir() and foreign.is_dir() and other.is_dir()


# ---- the encoder writer's contract checks --------------------------------------------------------------

RNG = np.random.default_rng(0)
W = {"fc.weight": RNG.normal(size=(16, 8)).astype(np.float32), "fc.bias": RNG.normal(size=16).astype(np.float32),
     "ln.weight": RNG.normal(size=16).astype(np.float32), "ln.bias": RNG.normal(size=16).astype(np.float32)}


def _graph(precision="fp32", dynamic=True, declare=True, weights=W) -> EncoderGraph:
    ctx = GraphContext("t", Weights(lambda n: weights[n], lambda n: weights[n].shape), precision)
    x = ctx.input("x", [1, "T" if dynamic else 4, 8])
    ctx.output(layer_norm(ctx, linear(ctx, x, "fc"), "ln", 1e-5), "y", [1, "T" if dynamic else 4, 16])
    axes = {"x": {1: "T"}, "y": {1: "T"}} if dynamic and declare else {}
    feeds = [{"x": RNG.normal(size=(1, 7, 8)).astype(np.float32)}] if dynamic else []
    return EncoderGraph("test", ctx.model(), feeds, axes)


def _torch_reference(x: np.ndarray) -> np.ndarray:
    import torch

    t = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(W["fc.weight"]), torch.from_numpy(W["fc.bias"]))
    return torch.nn.functional.layer_norm(t, (16,), torch.from_numpy(W["ln.weight"]), torch.from_numpy(W["ln.bias"]),
                                          1e-5).numpy()


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("fp16", 2e-2), ("int8", 0.15)])
def test_written_files_run_and_match_torch(tmp_path, dtype, tol):
    import onnxruntime as ort

    written = write_encoder(_graph(dtype), tmp_path / "e.onnx", dtype)
    assert written.inputs == [{"name": "x", "shape": [1, "T", 8], "dtype": "float32"}]
    assert dtype == "int8" or (tmp_path / written.data_file).is_file()  # int8 of a tiny model is all inline
    x = RNG.normal(size=(1, 5, 8)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "e.onnx")).run(None, {"x": x})[0]
    ref = _torch_reference(x)
    # measured max abs: fp32 5e-7, fp16 4e-3, int8 6e-2 on unit-variance LayerNorm outputs
    assert np.abs(got - ref).max() <= tol


def test_int8_graph_is_what_onnxruntimes_own_quantizer_makes_of_the_fp32_graph(tmp_path):
    """The int8 builder writes weight by weight what `quantize_dynamic` would write from the fp32 file (the
    board's dynq files): same ops, and identical outputs."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    write_encoder(_graph("fp32"), tmp_path / "f.onnx", "fp32")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8, per_channel=False)
    write_encoder(_graph("int8"), tmp_path / "i.onnx", "int8")
    ops = lambda p: sorted(n.op_type for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert ops(tmp_path / "i.onnx") == ops(tmp_path / "q.onnx")
    assert "MatMulInteger" in ops(tmp_path / "i.onnx") and "MatMul" not in ops(tmp_path / "i.onnx")
    x = RNG.normal(size=(1, 6, 8)).astype(np.float32)
    ours = ort.InferenceSession(str(tmp_path / "i.onnx")).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_an_undeclared_dynamic_axis_is_refused(tmp_path):
    with pytest.raises(SmtError, match="axis 1 is 'T', the board needs a static size"):
        write_encoder(_graph(declare=False), tmp_path / "e.onnx", "fp32")


def test_non_finite_weights_are_caught_by_the_run_check(tmp_path):
    bad = dict(W, **{"fc.bias": np.full(16, np.nan, np.float32)})
    with pytest.raises(SmtError, match="non-finite"):
        write_encoder(_graph(weights=bad), tmp_path / "e.onnx", "fp32")


# ---- teacher-forced greedy tokens vs a real greedy loop --------------------------------------------------

VOCAB, STOP = 11, 10


def _toy_logits(prefix: list[int], bias: float = 0.0) -> np.ndarray:
    """A deterministic 'language model': next-token logits as a function of the whole prefix."""
    seed = hash(tuple(prefix)) % (2**32)
    logits = np.random.default_rng(seed).normal(size=VOCAB)
    if len(prefix) >= 9:
        logits[STOP] += 5.0 + bias
    return logits


def _greedy(prompt: list[int], n: int) -> list[int]:
    seq, out = list(prompt), []
    for _ in range(n):
        tok = int(np.argmax(_toy_logits(seq)))
        if tok == STOP:
            break
        out.append(tok)
        seq.append(tok)
    return out


def _teacher_forced(prompt: list[int], continuation: list[int]) -> np.ndarray:
    seq = prompt + continuation
    return np.stack([_toy_logits(seq[:i + 1]) for i in range(len(seq))])


@pytest.mark.parametrize("flip_at", [None, 0, 2, 4])
def test_reference_tokens_equal_a_real_greedy_loop_up_to_the_first_difference(flip_at):
    prompt, n = [1, 2, 3], 8
    truth = _greedy(prompt, n)
    runtime = list(truth)
    if flip_at is not None and flip_at < len(runtime):
        runtime[flip_at] = (runtime[flip_at] + 1) % STOP   # the runtime chose differently here
        runtime = runtime[:flip_at + 1] + [0] * (len(truth) - flip_at - 1)
    logits = _teacher_forced(prompt, runtime)
    got = reference_tokens(logits, len(prompt), runtime, [STOP], n)
    if flip_at is None:
        assert got == truth
    else:
        assert got == truth[:flip_at + 1]
        assert got != runtime[:len(got)]


def test_a_runtime_that_stops_early_is_not_called_identical():
    prompt, n = [1, 2, 3], 8
    truth = _greedy(prompt, n)
    runtime = truth[:2]                      # stopped after two tokens, the reference goes on
    got = reference_tokens(_teacher_forced(prompt, runtime), len(prompt), runtime, [STOP], n)
    assert got != runtime and got[:2] == runtime


def test_reference_cache_reuses_only_decided_results():
    prompt, n = [1, 2, 3], 8
    truth = _greedy(prompt, n)
    cache = ReferenceCache()
    key = cache.key("ckpt", None, prompt)
    cache.add(key, truth, ReferenceResult(logits=_teacher_forced(prompt, truth)))
    assert cache.find(key, truth) is not None                          # same continuation
    differs_early = [(truth[0] + 1) % STOP] + truth[1:]
    assert cache.find(key, differs_early) is not None                  # decided at step 0
    assert cache.find(cache.key("ckpt", None, [1, 2]), truth) is None  # another prompt
    # A variant that agrees with the reference where the cached path did not: its tokens beyond that point
    # were never scored, so the cache must not answer.
    wrong = list(truth)
    wrong[1] = (wrong[1] + 1) % STOP
    cache2 = ReferenceCache()
    cache2.add(key, wrong, ReferenceResult(logits=_teacher_forced(prompt, wrong)))
    assert cache2.find(key, truth) is None


# ---- the text GGUF: large plain tensors are converted a block of rows at a time ---------------------------


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_1"])
def test_block_conversion_gives_the_bytes_of_whole_tensor_conversion(outtype):
    from smt_convert.converters.text_gguf import OUTTYPES, convert_array, convert_in_blocks

    qtype = OUTTYPES[outtype][0]
    data = np.random.default_rng(0).standard_normal((301, 64)).astype(np.float32)
    whole = convert_array(data, qtype)
    blocks = convert_in_blocks(data.shape, qtype, (data[i:i + 37] for i in range(0, 301, 37)))
    assert blocks.dtype == whole.dtype and blocks.shape == whole.shape
    assert blocks.tobytes() == whole.tobytes()


def test_a_bundle_written_in_blocks_is_byte_identical(tmp_path, monkeypatch):
    """The whole conversion with blocks of 1000 elements (every 2-D tensor of the tiny model goes the block
    path) writes the same GGUF bytes as with the default (the tiny model's tensors are all converted whole)."""
    from click.testing import CliRunner

    from smt_convert.converters import text_gguf
    from smt_convert.main import cli
    from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

    make_tiny_qwen3_asr(tmp_path / "hf", dtype=__import__("torch").bfloat16)
    files, calls = {}, []
    real = text_gguf.convert_in_blocks
    monkeypatch.setattr(text_gguf, "convert_in_blocks", lambda *a: calls.append(a[0]) or real(*a))
    for name, block in (("whole", text_gguf.BLOCK_ELEMS), ("blocks", 1000)):
        monkeypatch.setattr(text_gguf, "BLOCK_ELEMS", block)
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(tmp_path / "hf"), str(out), "--outtype", "q8_0",
                                          "--no-verify"])
        assert result.exit_code == 0, result.stderr
        files[name] = next(out.glob("*.gguf")).read_bytes()
    assert calls and (512, 64) in calls  # the block path ran (the embedding table among others)
    assert files["whole"] == files["blocks"]


def test_background_hashes_are_used_only_for_unchanged_files(tmp_path):
    import hashlib
    import os

    from smt_convert.converters.hashing import BackgroundHashes

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 100_000)
    b.write_bytes(b"y" * 10)
    hashes = BackgroundHashes()
    hashes.submit(a, b)
    assert hashes.sha256(a) == hashlib.sha256(b"x" * 100_000).hexdigest()
    hashes.sha256(b)                                   # finished on the worker
    b.write_bytes(b"z" * 11)                           # changed afterwards: hashed again, not the stale result
    os.utime(b, ns=(1, 1))
    assert hashes.sha256(b) == hashlib.sha256(b"z" * 11).hexdigest()
    hashes.close()
