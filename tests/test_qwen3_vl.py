"""Qwen3-VL (dense and MoE, DeepStack) end to end, against independent references.

- The streamed reference (archs/qwen3_vl/reference.py) against the whole `Qwen3VL(Moe)ForConditionalGeneration`
  called as a user would (input ids, pixel_values, image_grid_thw, mm_token_type_ids): HF's own DeepStack path.
- The vision ONNX against `get_image_features` (main rows and every DeepStack feature) on images other than the
  golden one, at fp32.
- Bundles converted from `save_pretrained` checkpoints (MoE also in the Hub release's transposed expert layout)
  verify at f32 against transformers; the text GGUF holds the same tensor data llama.cpp's converter writes.
- llama.cpp itself (llama-cpp-python), fed the runtime's spliced prompt rows [n, hidden x (1 + k)], gives the
  same logits and the same greedy tokens as the runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from smt_convert.archs.qwen3_5.reference import hf_patches
from smt_convert.archs.qwen3_5.vision_graph import check_images
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.plugin import ReferenceRequest, get_plugin
from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_vl

torch = pytest.importorskip("torch")

# fp32 on both sides, the same modules in the same order: measured max |diff| 0 for logits and rows.
REL_TOL = 1e-5
# The vision graph (onnxruntime fp32) against transformers: measured rel max 6e-7 on all three images.
VISION_REL = 1e-5
# llama.cpp (f32 GGUF, f32 KV cache) against the runtime on the same rows: measured NMSE 3e-13 (dense), 5e-13 (MoE).
LLAMA_NMSE = 1e-8


@pytest.fixture(scope="module", params=["dense", "moe", "moe-released"])
def case(request, tmp_path_factory):
    moe = request.param.startswith("moe")
    layout = "released" if request.param.endswith("released") else "saved"
    out = tmp_path_factory.mktemp(request.param)
    built = make_tiny_qwen3_vl(out / "hf", moe=moe, layout=layout)
    plugin = get_plugin("qwen3-vl-moe" if moe else "qwen3-vl")
    ckpt = Checkpoint.open(out / "hf")
    hp = plugin.read_hparams(ckpt, None)
    return request.param, built, ckpt, plugin, hp, out


def _rel(a, ref) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def test_checkpoint_is_read_as_it_is_on_disk(case):
    name, built, ckpt, plugin, hp, _ = case
    assert hp.vision.deepstack_indexes == (0, 1)
    assert hp.experts == ("released" if name == "moe-released" else "native")
    assert hp.text.gguf_arch == ("qwen3vl" if name == "dense" else "qwen3vlmoe")
    assert hp.text.rope_sections == [3, 3, 2, 0]  # the config's: llama.cpp reads them as HF does


def test_streamed_reference_equals_whole_model(case):
    name, built, ckpt, plugin, hp, _ = case
    ids_of = built["ids"]
    ny, nx = hp.vision.grid
    image = check_images(*hp.vision.image_size, seed=5)["photo"]
    prompt = [ids_of["<|im_start|>"], 11, 12, ids_of["<|vision_start|>"]] + [hp.image_token_id] * (ny * nx)
    prompt += [ids_of["<|vision_end|>"], 40, 41, 42]
    continuation = [50, 51, 52]
    result = plugin.reference(ckpt, hp, ReferenceRequest(None, image, prompt, continuation, []))
    pixel_values, grid = hf_patches(image, hp)
    ids = torch.tensor([prompt + continuation])
    model = built["model"]
    with torch.no_grad():
        full = model(
            input_ids=ids,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            mm_token_type_ids=(ids == hp.image_token_id).int(),
        ).logits[0]
        feats = model.model.get_image_features(pixel_values, grid)
        rows = torch.cat([feats.pooler_output[0], *[d[0] for d in feats.deepstack_features]], dim=1)
    assert result.encoder.shape == (ny * nx, 3 * hp.text.hidden_size)
    assert _rel(result.encoder, rows.numpy()) <= REL_TOL
    assert _rel(result.logits, full.numpy()) <= REL_TOL
    # DeepStack matters: without its adds the logits move far beyond the tolerance
    no_ds = result.encoder.copy()
    no_ds[:, hp.text.hidden_size :] = 0
    from smt_convert.archs.qwen3_vl import reference as R

    cls = R.classes(hp.text.moe)
    whole = cls.config.from_dict(ckpt.config)
    positions = R.rope_positions(whole, cls, prompt + continuation, hp.image_token_id, grid)
    plain = R.text_logits(
        whole.text_config, cls, R.checkpoint_loader(ckpt, hp), hp, prompt + continuation, no_ds, positions
    )
    assert _rel(plain, full.numpy()) > 1e3 * REL_TOL


@pytest.fixture(scope="module")
def bundles(case):
    name, built, ckpt, plugin, hp, out = case
    bundle = out / "bundle"
    result = CliRunner().invoke(cli, ["-q", plugin.name, str(ckpt.root), str(bundle), "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    return case, bundle, result.output


def test_bundle_verifies_at_f32_and_meets_the_board_contract(bundles):
    (name, built, ckpt, plugin, hp, out), bundle, output = bundles
    assert "FAIL" not in output
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = {(r["check"], r["metric"]): r for r in manifest["verification"]["rows"]}
    assert rows[("text logits", "nmse")]["value"] < 1e-9
    assert rows[("encoder", "rel max abs")]["value"] < 1e-5
    board = json.loads((bundle / "config.json").read_text())
    assert board["architectures"][0] == "Qwen3VL"  # the wrapper's DeepStack path (SMT-CONTRACT.md)
    import onnx

    (vision,) = bundle.glob("*-vision-*.onnx")
    graph = onnx.load(vision, load_external_data=False).graph
    assert [o.name for o in graph.output] == ["image_embeds", "deepstack_0", "deepstack_1"]
    shapes = {tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in graph.output}
    assert shapes == {(hp.vision.grid[0] * hp.vision.grid[1], hp.text.hidden_size)}
    (inp,) = graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 128, 128]


def test_vision_graph_matches_transformers_on_other_images(bundles):
    (name, built, ckpt, plugin, hp, out), bundle, _ = bundles
    from smt_convert.runtime.vision_encoder import VisionEncoder

    (vision,) = bundle.glob("*-vision-*.onnx")
    encoder = VisionEncoder(vision)
    for label, image in check_images(*hp.vision.image_size, seed=11).items():
        pixel_values, grid = hf_patches(image, hp)
        with torch.no_grad():
            feats = built["model"].model.get_image_features(pixel_values, grid)
        ref = torch.cat([feats.pooler_output[0], *[d[0] for d in feats.deepstack_features]], dim=1).numpy()
        assert _rel(encoder.encode(image), ref) <= VISION_REL, label


def test_text_gguf_holds_llama_cpp_converters_tensors(bundles, llama_cpp_converter):
    """Tensor by tensor (names, shapes, data) as llama.cpp's own converter writes the same checkpoint. Its converter
    reads the Hub's expert layout only, so the transformers-saved MoE is compared through the released one."""
    (name, built, ckpt, plugin, hp, out), bundle, _ = bundles
    if name == "moe":
        pytest.skip("llama.cpp's converter reads the released expert layout (the moe-released case)")
    import os
    import subprocess

    import gguf

    from smt_convert.testing.llama_cpp_converter import converter_command

    theirs = out / "llama.gguf"
    proc = subprocess.run(
        converter_command(llama_cpp_converter, ckpt.root, theirs, "--outtype", "f32"),
        capture_output=True,
        text=True,
        env={**os.environ, "SMT_BPE_PRE": "qwen2"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (ours,) = bundle.glob("*.gguf")
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert a.keys() == b.keys()
    for n in a:
        assert list(a[n].shape) == list(b[n].shape), n
        assert np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)), n


def test_llama_cpp_gives_the_runtimes_logits_and_greedy_text(bundles):
    (name, built, ckpt, plugin, hp, out), bundle, _ = bundles
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from smt_convert.runtime.pipeline import BundleRunner
    from smt_convert.testing.llama_cpp_decode import greedy_from_embeds

    runner = BundleRunner(bundle)
    ours = runner.run(bundle / "golden" / "input.png", max_new_tokens=10)
    prompt = ours.prompt
    assert prompt.embeds.shape[1] == 3 * hp.text.hidden_size  # main + 2 DeepStack slices per row
    (gguf_file,) = bundle.glob("*.gguf")
    theirs_logits, theirs_tokens = greedy_from_embeds(
        gguf_file, prompt.embeds, _as4(prompt.positions), runner.decoder.embed, 10, set(runner.stop_ids())
    )
    assert theirs_tokens == ours.tokens
    ref = ours.first_logits.reshape(-1)
    got = theirs_logits[-1]
    assert float(np.mean((got - ref) ** 2) / np.mean(ref**2)) < LLAMA_NMSE


def _as4(positions: np.ndarray) -> np.ndarray:
    from smt_convert.runtime.decoders.blocks import as_mrope_positions

    return as_mrope_positions(positions)


@pytest.mark.slow
def test_config_json_mutations_are_one_line(tmp_path):
    """The Qwen3-VL config reader under issue 21's document mutations (tests/test_document_fuzz.py): every field
    dropped or swapped to each JSON type gives one line and exit 2, or a bundle; never a traceback."""
    import shutil

    from tests.test_document_fuzz import assert_one_line, mutated, mutations, run

    source = tmp_path / "hf"
    make_tiny_qwen3_vl(source, moe=True)
    document = json.loads((source / "config.json").read_text())
    for i, (path, value) in enumerate(mutations(document, 80)):
        ckpt = tmp_path / f"hf{i}"
        shutil.copytree(source, ckpt)
        (ckpt / "config.json").write_text(json.dumps(mutated(document, path, value)))
        out = tmp_path / f"out{i}"
        assert_one_line(*run(["inspect", ckpt]))
        code, stderr, seconds = run(["-q", "qwen3-vl-moe", ckpt, out, "--no-verify"])
        assert_one_line(code, stderr, seconds)
        assert code == 0 or not out.exists()
        shutil.rmtree(ckpt)
        shutil.rmtree(out, ignore_errors=True)
