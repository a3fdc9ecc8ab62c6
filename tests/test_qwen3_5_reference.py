"""Qwen3.5's streamed Hugging Face reference (archs/qwen3_5/reference.py) equals the whole transformers model.

Tiny checkpoints written by transformers' `save_pretrained` (dense, MoE with per-expert tensors on disk, text-only;
tied and untied). The independent side is the full `Qwen3_5(Moe)ForConditionalGeneration` / `ForCausalLM` called
as a user would: input ids, pixel_values + image_grid_thw from HF's processor, mm_token_type_ids (so HF computes
its own M-RoPE positions). The streamed side never instantiates that model.
"""

import numpy as np
import pytest

from smt_convert.archs.qwen3_5 import reference as R
from smt_convert.archs.qwen3_5.vision_graph import check_images
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.plugin import ReferenceRequest, get_plugin
from smt_convert.testing.checkpoints import make_tiny_qwen3_5

torch = pytest.importorskip("torch")

# fp32 on both sides, the same modules run in the same order: measured max |diff| = 0 (bit-identical) for the
# logits and the vision rows of every case. The bound is the plan's 1e-5 relative.
REL_TOL = 1e-5

CASES = {  # name -> (moe, text_only, tie, image size)
    "dense": (False, False, True, (128, 128)),
    "dense-untied-96x160": (False, False, False, (96, 160)),
    "moe": (True, False, True, (128, 128)),
    "dense-text": (False, True, True, None),
    "moe-text-untied": (True, True, False, None),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    moe, text_only, tie, size = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    built = make_tiny_qwen3_5(out, moe=moe, text_only=text_only, tie=tie)
    ckpt = Checkpoint.open(out)
    plugin = get_plugin("qwen3.5-moe" if moe else "qwen3.5")

    class Opts:
        image_size = size

    hp = plugin.read_hparams(ckpt, Opts())
    return request.param, built, ckpt, plugin, hp


def _rel(a, ref) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def _prompt(built, hp, n_image: int) -> list[int]:
    ids = built["ids"]
    head = [ids["<|im_start|>"], 11, 12, 13]
    tail = [ids["<|im_end|>"], 40, 41, 42, 43, 44]
    if n_image == 0:
        return head + [20, 21, 22] + tail
    return head + [ids["<|vision_start|>"]] + [hp.image_token_id] * n_image + [ids["<|vision_end|>"]] + tail


def test_streamed_equals_full_model(case):
    name, built, ckpt, plugin, hp = case
    model = built["model"]
    continuation = [50, 51, 52, 53]
    if hp.vision is None:
        prompt = _prompt(built, hp, 0)
        request = ReferenceRequest(None, None, prompt, continuation, [])
        ids = torch.tensor([prompt + continuation])
        with torch.no_grad():
            full = model(input_ids=ids).logits[0].numpy()
        result = plugin.reference(ckpt, hp, request)
        assert result.encoder is None
    else:
        h, w = hp.vision.image_size
        ny, nx = hp.vision.grid
        image = check_images(h, w, seed=3)["photo"]
        prompt = _prompt(built, hp, ny * nx)
        request = ReferenceRequest(None, image, prompt, continuation, [])
        result = plugin.reference(ckpt, hp, request)
        pixel_values, grid = R.hf_patches(image, hp)
        ids = torch.tensor([prompt + continuation])
        with torch.no_grad():
            full = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid,
                         mm_token_type_ids=(ids == hp.image_token_id).int()).logits[0].numpy()
            rows = model.model.get_image_features(pixel_values, grid).pooler_output[0].numpy()
        assert result.encoder.shape == (ny * nx, hp.text.hidden_size)
        print(f"{name}: vision rows rel {_rel(result.encoder, rows):.1e}")
        assert _rel(result.encoder, rows) <= REL_TOL
        assert result.extra["image_grid_thw"] == [[1, h // 16, w // 16]]
    assert result.logits.shape == full.shape == (len(prompt) + len(continuation), hp.text.vocab_size)
    print(f"{name}: logits rel {_rel(result.logits, full):.1e}")
    assert _rel(result.logits, full) <= REL_TOL


def test_image_positions_are_mrope(case):
    """The image prompt's positions are HF's 3-D ones (not 0..L-1), and the logits depend on them: the test
    above could not pass with 1-D positions."""
    name, built, ckpt, plugin, hp = case
    if hp.vision is None:
        pytest.skip("text-only")
    cls = R.classes(hp.text.moe)
    whole, text = R.hf_configs(ckpt.config, hp, cls)
    ny, nx = hp.vision.grid
    prompt = _prompt(built, hp, ny * nx)
    grid = torch.tensor([[1, 2 * ny, 2 * nx]])
    pos = R.rope_positions(whole, cls, prompt, hp.image_token_id, grid)[:, 0].T.numpy()
    start = prompt.index(hp.image_token_id)
    y, x = np.divmod(np.arange(ny * nx), nx)
    np.testing.assert_array_equal(pos[start:start + ny * nx], np.stack([np.full(ny * nx, start), start + y, start + x], 1))
    assert pos[start + ny * nx, 0] == start + max(nx, ny)
    load = R.checkpoint_loader(ckpt, hp)
    flat = torch.arange(len(prompt)).view(1, 1, -1).expand(3, 1, -1)
    rows = np.ones((ny * nx, hp.text.hidden_size), np.float32)
    a = R.text_logits(text, cls, load, hp, prompt, rows, torch.from_numpy(pos.T[:, None, :].copy()))
    b = R.text_logits(text, cls, load, hp, prompt, rows, flat)
    assert np.abs(a - b).max() > 1e3 * REL_TOL * np.abs(a).max()


def test_missing_tensor_is_named(case, tmp_path):
    """Every parameter comes from the checkpoint: a missing one is an error naming it."""
    from smt_convert.runtime.errors import SmtError

    name, built, ckpt, plugin, hp = case
    missing = f"{hp.prefix}layers.1.post_attention_layernorm.weight"
    real = ckpt.load

    class Holey:
        config, root, tensors = ckpt.config, ckpt.root, ckpt.tensors

        def load(self, n):
            if n == missing:
                raise SmtError(f"tensor {n} not found")
            return real(n)

    with pytest.raises(SmtError, match=missing.replace(".", r"\.")):
        plugin.reference(Holey(), hp, ReferenceRequest(None, None, _prompt(built, hp, 0), [], []))
