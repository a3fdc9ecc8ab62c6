"""The divergence trace names the block a fault is in, for every family's encoder and decoder.

Faults are injected into a copy of a converted bundle (a GGUF tensor or an ONNX initializer edited in place, the
manifest's hashes updated so `verify` runs), and the reference is the untouched checkpoint through transformers:
the trace must name exactly the faulty block first, and a clean bundle must report no block outside tolerance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.testing.checkpoints import (
    make_tiny_paddleocr_vl,
    make_tiny_qwen3_5,
    make_tiny_qwen3_asr,
    make_tiny_qwen3_vl,
)

# family -> (command, builder, extra options)
FAMILIES = {
    "qwen3-asr": ("qwen3-asr", make_tiny_qwen3_asr, []),
    "qwen3.5": ("qwen3.5", make_tiny_qwen3_5, []),
    "qwen3.5-moe": ("qwen3.5-moe", lambda out: make_tiny_qwen3_5(out, moe=True), []),
    "paddleocr-vl": ("paddleocr-vl", make_tiny_paddleocr_vl, ["--image-size", "112"]),
    # DeepStack: encoder blocks 0 and 1 feed a merger of their own; decoder layers 0 and 1 get DeepStack rows added
    "qwen3-vl": ("qwen3-vl", make_tiny_qwen3_vl, []),
    "qwen3-vl-moe": ("qwen3-vl-moe", lambda out: make_tiny_qwen3_vl(out, moe=True), []),
}
# family -> encoder block 1's (first LayerNorm weight, MLP output projection weight), canonical names
ENCODER_BLOCK_1 = {
    "qwen3-asr": ("model.audio_tower.layers.1.self_attn_layer_norm.weight", "model.audio_tower.layers.1.fc2.weight"),
    "qwen3.5": ("model.visual.blocks.1.norm1.weight", "model.visual.blocks.1.mlp.linear_fc2.weight"),
    "qwen3.5-moe": ("model.visual.blocks.1.norm1.weight", "model.visual.blocks.1.mlp.linear_fc2.weight"),
    "qwen3-vl": ("model.visual.blocks.1.norm1.weight", "model.visual.blocks.1.mlp.linear_fc2.weight"),
    "qwen3-vl-moe": ("model.visual.blocks.1.norm1.weight", "model.visual.blocks.1.mlp.linear_fc2.weight"),
    "paddleocr-vl": (
        "model.visual.vision_model.encoder.layers.1.layer_norm1.weight",
        "model.visual.vision_model.encoder.layers.1.mlp.fc2.weight",
    ),
}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (checkpoint, {(outtype, onnx_dtype): bundle}), converted once per module."""
    root = tmp_path_factory.mktemp("trace")
    made = {}

    def get(name: str, outtype: str = "f32", onnx_dtype: str = "fp32"):
        command, build, extra = FAMILIES[name]
        ckpt, bundles = made.setdefault(name, (root / f"ckpt-{name}", {}))
        if not ckpt.exists():
            build(ckpt)
        key = (outtype, onnx_dtype)
        if key not in bundles:
            out = root / f"{name}-{outtype}-{onnx_dtype}"
            result = invoke(
                "-q", command, ckpt, out, "--outtype", outtype, "--onnx-dtype", onnx_dtype, "--no-verify", *extra
            )
            assert result.exit_code == 0, result.output
            bundles[key] = out
        return ckpt, bundles[key]

    return get


def faulty_copy(bundle: Path, dest: Path, edit) -> Path:
    """A copy of `bundle` with `edit(copy)` applied and the manifest's sizes and hashes updated."""
    shutil.copytree(bundle, dest)
    edit(dest)
    manifest_path = dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        data = (dest / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return dest


def gguf_edit(names_fn):
    """An edit of the bundle's GGUF: `names_fn(tensors)` changes f32 tensors (name -> array view) in place."""

    def edit(bundle: Path):
        from gguf import GGUFReader

        manifest = json.loads((bundle / "manifest.json").read_text())
        reader = GGUFReader(bundle / manifest["text"]["file"], "r+")
        names_fn({t.name: t.data for t in reader.tensors})
        reader.data.flush()
        del reader

    return edit


def onnx_edit(prefix: str, change):
    """An edit of the ONNX file holding the initializer starting with `prefix`: `change(array) -> array`."""

    def edit(bundle: Path):
        import onnx
        from onnx import numpy_helper

        for path in sorted(bundle.glob("*.onnx")):
            model = onnx.load(str(path))
            hits = [i for i in model.graph.initializer if i.name.startswith(prefix)]
            if not hits:
                continue
            init = hits[0]
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(change(array).astype(array.dtype), init.name))
            data = path.with_name(path.name + ".data")
            data.unlink(missing_ok=True)
            onnx.save(model, str(path), save_as_external_data=True, location=data.name, all_tensors_to_one_file=True)
            return
        raise AssertionError(f"no initializer {prefix}*")

    return edit


def trace_of(bundle: Path, ckpt: Path) -> tuple[int, dict]:
    result = invoke("-q", "verify", bundle, "--reference", ckpt, "--trace", "--json", "--max-new-tokens", 6)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_clean_bundle_has_no_block_outside_tolerance(converted, name):
    ckpt, bundle = converted(name)
    code, doc = trace_of(bundle, ckpt)
    trace = doc["trace"]
    assert code == 0 and trace["ok"] and trace["first_out_of_tolerance"] is None, trace
    blocks = [(r["part"], r["block"]) for r in trace["rows"]]
    assert ("text", "layer 0") in blocks and ("text", "logits") in blocks
    assert ("encoder", "stem") in blocks and ("encoder", "block 1") in blocks and ("encoder", "output") in blocks


@pytest.mark.parametrize("name", list(FAMILIES))
def test_scaled_norm_in_a_decoder_layer_is_named_first(converted, name, tmp_path):
    ckpt, bundle = converted(name)

    def scale(tensors):
        tensors["blk.1.attn_norm.weight"][...] *= 1.5

    code, doc = trace_of(faulty_copy(bundle, tmp_path / "bad", gguf_edit(scale)), ckpt)
    assert code == 1 and doc["trace"]["first_out_of_tolerance"] == "text layer 1", doc["trace"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_swapped_weight_in_a_decoder_layer_is_named_first(converted, name, tmp_path):
    ckpt, bundle = converted(name)

    down = "ffn_down_exps.weight" if name.endswith("-moe") else "ffn_down.weight"

    def swap(tensors):  # layer 0's FFN down projection (the experts' for MoE) replaced by layer 1's
        tensors[f"blk.0.{down}"][...] = np.array(tensors[f"blk.1.{down}"])

    code, doc = trace_of(faulty_copy(bundle, tmp_path / "bad", gguf_edit(swap)), ckpt)
    assert code == 1 and doc["trace"]["first_out_of_tolerance"] == "text layer 0", doc["trace"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_scaled_norm_in_an_encoder_block_is_named_first(converted, name, tmp_path):
    ckpt, bundle = converted(name)
    norm, _ = ENCODER_BLOCK_1[name]
    code, doc = trace_of(faulty_copy(bundle, tmp_path / "bad", onnx_edit(norm, lambda w: w * 1.5)), ckpt)
    assert code == 1 and doc["trace"]["first_out_of_tolerance"] == "encoder block 1", doc["trace"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fp16_overflow_in_an_encoder_block_is_named_first(converted, name, tmp_path):
    """An fp16 encoder whose block 1 overflows (its MLP output made 1e5 times larger: beyond fp16's 65504)."""
    ckpt, bundle = converted(name, "f16", "fp16")
    _, fc2 = ENCODER_BLOCK_1[name]
    code, doc = trace_of(faulty_copy(bundle, tmp_path / "bad", onnx_edit(fc2, lambda w: w * 1e5)), ckpt)
    first = next(r for r in doc["trace"]["rows"] if not r["ok"])
    assert code == 1 and (first["part"], first["block"]) == ("encoder", "block 1"), doc["trace"]
    assert first["rel_error"] == "inf", first  # the overflow itself, where it happened


def test_failing_conversion_names_the_block_in_its_table_and_manifest(converted, tmp_path, monkeypatch):
    """A conversion whose GGUF gets a scaled norm in layer 1 (the plugin's transform patched) fails verification,
    and its table and manifest say where: text layer 1."""
    from smt_convert.converters.plugin import get_plugin

    plugin_cls = type(get_plugin("qwen3-asr"))
    original = plugin_cls.text_tensors

    def faulty(self, hp):
        tensors = original(self, hp)
        for t in tensors:
            if t.name == "blk.1.attn_norm.weight":
                t.transform = lambda *arrays, base=t.transform: (base(*arrays) if base else arrays[0]) * 1.5
        return tensors

    monkeypatch.setattr(plugin_cls, "text_tensors", faulty)
    ckpt, _ = converted("qwen3-asr")
    out = tmp_path / "bad"
    result = invoke("-q", "qwen3-asr", ckpt, out, "--outtype", "f32")
    assert result.exit_code == 1, result.output
    assert "text layer 1" in result.stdout
    rows = json.loads((out / "manifest.json").read_text())["verification"]["rows"]
    trace = next(r for r in rows if r["check"] == "trace")
    assert trace["value"] == "text layer 1" and not trace["gate"], trace


def test_quantised_trace_separates_conversion_from_quantisation(converted):
    """A q8_0 / int8 Qwen3.5 bundle traced with its f32 / fp32 bundle alongside: the float bundle's column (the
    conversion error) is at float rounding everywhere, this bundle's error against the float bundle (the
    quantisation error) is what its error against the reference is made of."""
    ckpt, quantised = converted("qwen3.5", "q8_0", "int8")
    _, float_bundle = converted("qwen3.5")
    result = invoke("-q", "verify", quantised, "--reference", ckpt, "--trace", "--json", "--float-bundle", float_bundle)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["trace"]["rows"]
    assert {(r["part"], r["block"]) for r in rows} >= {("encoder", "block 1"), ("text", "layer 3")}
    for r in rows:
        assert r["conversion_error"] < 1e-4, r
        if r["block"] not in ("stem", "embeddings"):  # int8 keeps the patch convolution float; q8_0 rows are near
            assert r["quantisation_error"] > 1e-3, r
            assert abs(r["quantisation_error"] - r["rel_error"]) < 0.1 * r["rel_error"], r


def test_trace_options_need_their_companions(converted, tmp_path):
    ckpt, bundle = converted("qwen3-asr")
    result = invoke("verify", bundle, "--trace")
    assert result.exit_code == 2 and "--trace: needs --reference" in result.output
    result = invoke("verify", bundle, "--reference", ckpt, "--float-bundle", bundle)
    assert result.exit_code == 2 and "--float-bundle: applies to --trace" in result.output
    _, quantised = converted("qwen3-asr", "q8_0", "fp32")
    result = invoke("verify", bundle, "--reference", ckpt, "--trace", "--float-bundle", quantised)
    assert result.exit_code == 2 and "text.outtype: q8_0 is not a float type" in result.output


def test_block_outputs_are_found_from_the_weights_nodes_read():
    """A stage between blocks (a DeepStack-like merger reading block 0's output) and a final norm: the stem is
    block 0's input, each block's output what the next weight-reading node takes."""
    import onnx
    from onnx import TensorProto, helper

    from smt_convert.converters.encoder_trace import trace_points

    def w(name):
        return helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])

    names = ["m.blocks.0.n.weight", "m.blocks.0.fc.weight", "m.stage.0.fc.weight", "m.blocks.1.n.weight"]
    names += ["m.blocks.1.fc.weight", "m.norm.weight", "const_1"]
    nodes = [
        helper.make_node("Mul", ["x", "const_1"], ["x1"]),
        helper.make_node("Mul", ["x1", "m.blocks.0.n.weight"], ["a"]),
        helper.make_node("Mul", ["a", "m.blocks.0.fc.weight"], ["b"]),
        helper.make_node("Add", ["x1", "b"], ["h0"]),
        helper.make_node("Mul", ["h0", "m.stage.0.fc.weight"], ["s0"]),
        helper.make_node("Mul", ["h0", "m.blocks.1.n.weight"], ["c"]),
        helper.make_node("Mul", ["c", "m.blocks.1.fc.weight"], ["e"]),
        helper.make_node("Add", ["h0", "e"], ["h1"]),
        helper.make_node("Mul", ["h1", "m.norm.weight"], ["y0"]),
        helper.make_node("Add", ["y0", "s0"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", [io[0]], [io[1]], [w(n) for n in names])
    onnx.checker.check_graph(graph)
    points = [(p.label, p.store_name, p.value) for p in trace_points(graph)]
    assert points == [
        ("stem", "block:m.blocks.0.input", "x1"),
        ("block 0", "block:m.blocks.0.output", "h0"),
        ("block 1", "block:m.blocks.1.output", "h1"),
    ]
