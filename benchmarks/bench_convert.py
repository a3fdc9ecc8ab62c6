"""Benchmark for issue 8: `smt-convert` against llama.cpp's own converter, same checkpoints, same machine, one run.

Every target of issue 8 is a ratio (or a bound) measured here in ONE run, so machine speed and load cancel out:

| target | measured as |
|---|---|
| ASR, no verification: wall <= 0.67x, peak RSS <= 1.0x llama.cpp | `smt-convert qwen3-asr --no-verify` vs llama.cpp text GGUF (f16) + mmproj |
| ASR with verification: wall <= 2x llama.cpp, peak RSS <= 2.5 GB | `smt-convert qwen3-asr` (default: verify) |
| PaddleOCR-VL defaults: <= 60 s, peak RSS <= 2.5 GB | `smt-convert paddleocr-vl` (default: verify) |
| Qwen3.5 text, q8_0: peak RSS 8 layers / 4 layers <= 1.15x | `smt-convert qwen3.5 --outtype q8_0` on 4- and 8-layer checkpoints |

Checkpoints (built once, cached in --workdir; random bf16 weights, REAL widths; speed and memory do not depend
on the values). Names and shapes come from transformers' own model classes instantiated on the `meta` device
(no memory) from their config classes; weights are generated and written tensor by tensor with safetensors, in
shards of <= 1 GB. Tokenizers are the project's tiny test tokenizers (a few hundred pieces; both converters
pad the vocabulary to the real size).

- Qwen3-ASR-0.6B: the published 0.6B sizes (table below, as benchmarks/bench_qwen3_asr.py), in the ORIGINAL Qwen
  release layout (`thinker_config`, `thinker.audio_tower.*` with `proj1`/`proj2`, `thinker.model.*`): the only
  layout llama.cpp's converter accepts for the mmproj (it reads `thinker_config.audio_config`; with the
  transformers-native layout it finds no audio encoder). smt-convert accepts both.
- PaddleOCR-VL 0.9B: transformers' `PaddleOCRVLConfig` defaults (documented there as the released checkpoint's),
  in the ORIGINAL release layout (flat config, `model.*`, `visual.vision_model.*`, `mlp_AR.*`, untied `lm_head`,
  `vision_config.architectures = ["PaddleOCRVisionModel"]`, which llama.cpp's --mmproj dispatches on;
  `preprocessor_config.json` with min/max_pixels, which it reads). mrope_section [16, 24, 24] as in the release.
- Qwen3.5 text-only (`Qwen3_5ForCausalLM`) at Qwen3.5-4B widths, 4 and 8 layers: QWEN35_4B below; hidden 2560
  and vocab 248320 are given, the other sizes are ASSUMED from the public Qwen3.5-4B config as we remember it
  (marked there); fields not listed are transformers' `Qwen3_5TextConfig` defaults.

llama.cpp's converter (convert_hf_to_gguf.py + conversion/ + its bundled gguf-py) is taken from --llama-cpp DIR
or $LLAMA_CPP_DIR (either the llama.cpp tree or an unpacked llama-cpp-python sdist); with neither, the
llama-cpp-python sdist is fetched once with `pip download --no-binary :all:` into <workdir>/llama-cpp-src. It
is run unmodified except for one thing: the tiny test tokenizer's pre-tokenizer hash is of course not in its
table, so a wrapper makes `get_vocab_base_pre` fall back to the model's real pre-tokenizer name ("qwen2",
"qwen35") instead of raising (vocabulary writing is a negligible part of the work).

Each conversion is one subprocess. Peak RSS is `ru_maxrss` from os.wait4 (the largest of the process and its
reaped descendants; this script's own process stays small and does not import torch, so the pre-exec image does
not inflate it), and a 0.2 s sampler of the summed RSS of the whole process tree, which also enforces
--max-rss-gb. Wall time is from spawn to exit (imports included); CPU time (user+sys, os.wait4) is reported
too, since on a shared machine it moves much less with other people's load than wall time does (the 1-minute
load average at the end of each case is in the JSON).

--smt-tree DIR runs smt-convert from another checkout (e.g. `git archive HEAD | tar -x -C DIR`) instead of the
installed one, so "before" and "after" numbers come from fixed commits while the working tree moves.

    python benchmarks/bench_convert.py --workdir /tmp/bench-convert [--only asr,paddle,qwen35] [--json r.json]
    python benchmarks/bench_convert.py --list        # the case names --only accepts
    python benchmarks/bench_convert.py --report a.json b.json   # tables from earlier runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from smt_convert.testing.llama_cpp_converter import (PRE_TOKENIZER_ENV, WRAPPER, cached_or_fetched,
                                                      converter_command, converter_tree)

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20

# ---- model shape tables -------------------------------------------------------------------------------------

# Published Qwen3-ASR-0.6B hyperparameters (text decoder = Qwen3-0.6B), as benchmarks/bench_qwen3_asr.py.
QWEN3_ASR_0_6B = {
    "text": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                 max_position_embeddings=65536, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "audio": dict(num_mel_bins=128, d_model=896, encoder_layers=18, encoder_attention_heads=14,
                  encoder_ffn_dim=3584, downsample_hidden_size=480, n_window=50, n_window_infer=800),
    # original release: text_config.rope_scaling (llama.cpp writes these as rope.dimension_sections)
    "mrope_section": [24, 20, 20],
}

# Qwen3.5-4B text widths. GIVEN: hidden_size 2560, vocab 248320. ASSUMED (public Qwen3.5-4B config as we
# remember it; check against the real config.json when available): the rest of this dict. Not listed:
# transformers' Qwen3_5TextConfig defaults (linear_conv_kernel_dim 4, rms_norm_eps 1e-6, ...).
QWEN35_4B = dict(
    vocab_size=248320, hidden_size=2560,                                   # given
    intermediate_size=9216,                                                # assumed
    num_attention_heads=16, num_key_value_heads=4, head_dim=256,           # assumed (= the 9B/default heads)
    linear_num_key_heads=16, linear_num_value_heads=32,                    # assumed
    linear_key_head_dim=128, linear_value_head_dim=128,                    # assumed
    full_attention_interval=4, tie_word_embeddings=True,                   # assumed (4B ties like Qwen3-4B)
    max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
)

# Qwen3-VL-2B-Instruct widths. GIVEN by the issue: the family (Qwen3 text + DeepStack vision); ASSUMED (the public
# config as we remember it; check against the real config.json when available): every number below. Not listed:
# transformers' Qwen3VL(Text|Vision)Config defaults. Saved as transformers 5 writes it (the layout both converters
# read for a dense model).
QWEN3_VL_2B = {
    "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                 max_position_embeddings=262144, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                   num_position_embeddings=2304, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                   deepstack_visual_indexes=[5, 11, 17]),
}
# Qwen3-VL-30B-A3B widths, 2 of its 48 layers (depth is not the variable here; the experts' width is). ASSUMED as
# remembered, like the 2B above. Written in the Hub release's expert layout ([E, H, 2F] / [E, F, H]), the one
# llama.cpp's converter reads.
QWEN3_VL_30B_A3B = {
    "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                 num_experts=128, num_experts_per_tok=8, num_hidden_layers=2, num_attention_heads=32,
                 num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=262144,
                 tie_word_embeddings=False, decoder_sparse_step=1,
                 rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048,
                   num_position_embeddings=2304, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                   deepstack_visual_indexes=[8, 16, 24]),
}
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_processor_type": "Qwen2VLImageProcessorFast",
}

PADDLEOCR_MROPE_SECTION = [16, 24, 24]  # the release's text rope_scaling.mrope_section (head_dim 128 -> 64 pairs)

# Data, not code: as the project's tiny test checkpoints / the real processors write them.
PADDLEOCR_PREPROCESSOR = {
    "image_processor_type": "PaddleOCRVLImageProcessor", "do_resize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 147384, "max_pixels": 2822400, "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
}
QWEN3_5_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN3_5_USER_DEFINED = ["<think>", "</think>"]


def _tokenizer_builders():
    """The project's tiny tokenizer builders, wherever they live this week."""
    try:
        from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer, build_spm_tokenizer
    except ImportError:
        try:
            from smt_convert.converters.tiny_tokenizers import build_qwen_bpe_tokenizer, build_spm_tokenizer
        except ImportError as e:
            sys.exit(f"cannot import the tiny tokenizer builders ({e}); is the package installed from this "
                     f"checkout? `pip install --no-deps -e {ROOT}`")
    return build_qwen_bpe_tokenizer, build_spm_tokenizer


# ---- checkpoint writing (runs in a child process: `--_build NAME DIR`) -------------------------------------

def _meta_shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a transformers model's state dict, without allocating it."""
    import torch

    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _write_random(out: Path, shapes: dict[str, tuple[int, ...]], zero_centred_norms: bool,
                  shard_bytes: int = 1 << 30) -> None:
    """Random bf16 tensors (matrices N(0, 0.02), norm weights 1 + N(0, 0.02) or N(0, 0.02) when the model adds
    1 itself), sharded by size, with an index; each tensor generated in row chunks so the float32 temporary is
    small."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)

    def make(name, shape):
        t = torch.empty(shape, dtype=torch.bfloat16)
        flat = t.view(-1)
        step = 1 << 24
        for i in range(0, flat.numel(), step):
            n = min(step, flat.numel() - i)
            flat[i:i + n] = torch.randn(n, generator=gen) * 0.02
        if len(shape) == 1 and "norm" in name and not zero_centred_norms:
            t += 1.0
        return t

    names = sorted(shapes)
    shards, cur, size = [], [], 0
    for n in names:
        nbytes = 2 * max(1, int(torch.Size(shapes[n]).numel()))
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for k, part in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: make(n, shapes[n]) for n in part}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        del tensors
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def build_qwen3_asr(out: Path) -> None:
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    from smt_convert.testing.checkpoints import qwen3_asr_original_name

    build_bpe, _ = _tokenizer_builders()
    ids = build_bpe(out)  # Qwen3-ASR specials (default), ChatML template, tokenizer_config.json
    t, a = dict(QWEN3_ASR_0_6B["text"]), dict(QWEN3_ASR_0_6B["audio"])
    a["output_dim"] = t["hidden_size"]
    config = Qwen3ASRConfig(audio_config=a, text_config={"model_type": "qwen3", **t},
                            audio_token_id=ids["<|audio_pad|>"], tie_word_embeddings=True)
    shapes = _meta_shapes(Qwen3ASRForConditionalGeneration, config)
    shapes.pop("lm_head.weight", None)  # tied

    _write_random(out, {qwen3_asr_original_name(k): v for k, v in shapes.items()}, zero_centred_norms=False)
    cfg = config.to_dict()
    thinker = {"audio_config": cfg["audio_config"], "text_config": cfg["text_config"],
               "audio_token_id": cfg["audio_token_id"], "model_type": "qwen3_asr_thinker",
               "tie_word_embeddings": True}
    thinker["text_config"]["rope_scaling"] = {"mrope_section": QWEN3_ASR_0_6B["mrope_section"],
                                              "interleaved": True, "rope_type": "default"}
    cfg = {"architectures": ["Qwen3ASRForConditionalGeneration"], "model_type": "qwen3_asr",
           "thinker_config": thinker, "support_languages": ["Chinese", "English"]}
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))


def build_paddleocr_vl(out: Path) -> None:
    from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration

    from smt_convert.testing.checkpoints import paddleocr_original_name

    _, build_spm = _tokenizer_builders()
    ids = build_spm(out)
    defaults = PaddleOCRVLConfig().to_dict()
    text = {k: v for k, v in defaults["text_config"].items() if k not in ("id2label", "label2id")}
    vision = {k: v for k, v in defaults["vision_config"].items() if k not in ("id2label", "label2id")}
    text["tie_word_embeddings"] = False  # the release has a distinct lm_head
    tokens = dict(image_token_id=ids["<|IMAGE_PLACEHOLDER|>"], vision_start_token_id=ids["<|IMAGE_START|>"],
                  vision_end_token_id=ids["<|IMAGE_END|>"], video_token_id=ids["<|IMAGE_PLACEHOLDER|>"])
    config = PaddleOCRVLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    shapes = _meta_shapes(PaddleOCRVLForConditionalGeneration, config)

    _write_random(out, {paddleocr_original_name(k): v for k, v in shapes.items()}, zero_centred_norms=False)
    flat = {k: v for k, v in text.items() if k not in ("rope_parameters", "model_type", "architectures")}
    rope = text.get("rope_parameters") or {}
    cfg = {"architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl", **flat,
           "rope_scaling": {"mrope_section": PADDLEOCR_MROPE_SECTION, "rope_type": "default", "type": "default"},
           "rope_theta": rope.get("rope_theta", 500000.0), "torch_dtype": "bfloat16",
           "vision_config": {**{k: v for k, v in vision.items() if k != "rope_parameters"},
                             "model_type": "paddleocr_vl", "architectures": ["PaddleOCRVisionModel"]},
           **tokens}
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    (out / "preprocessor_config.json").write_text(json.dumps(PADDLEOCR_PREPROCESSOR, indent=2) + "\n")


def build_qwen35_text(out: Path, layers: int) -> None:
    import transformers

    build_bpe, _ = _tokenizer_builders()
    ids = build_bpe(out, specials=QWEN3_5_SPECIALS, user_defined=QWEN3_5_USER_DEFINED)
    kinds = ["full_attention" if (i + 1) % QWEN35_4B["full_attention_interval"] == 0 else "linear_attention"
             for i in range(layers)]
    config = transformers.Qwen3_5TextConfig(**QWEN35_4B, num_hidden_layers=layers, layer_types=kinds,
                                            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    shapes = _meta_shapes(transformers.Qwen3_5ForCausalLM, config)
    shapes.pop("lm_head.weight", None)  # tied
    _write_random(out, shapes, zero_centred_norms=True)
    cfg = config.to_dict()
    cfg["architectures"] = ["Qwen3_5ForCausalLM"]
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))


def build_qwen3_vl(out: Path, moe: bool = False) -> None:
    import transformers

    build_bpe, _ = _tokenizer_builders()
    ids = build_bpe(out, specials=QWEN3_5_SPECIALS, user_defined=QWEN3_5_USER_DEFINED)
    sizes = QWEN3_VL_30B_A3B if moe else QWEN3_VL_2B
    text = {**sizes["text"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    config_cls = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
    config = config_cls(
        text_config=text, vision_config=sizes["vision"], tie_word_embeddings=text["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model_cls = (transformers.Qwen3VLMoeForConditionalGeneration if moe
                 else transformers.Qwen3VLForConditionalGeneration)
    shapes = _meta_shapes(model_cls, config)
    if text["tie_word_embeddings"]:
        shapes.pop("lm_head.weight", None)
    if moe:  # the release's transposed experts
        shapes = {k: (v[0], v[2], v[1]) if k.endswith(("experts.gate_up_proj", "experts.down_proj")) else v
                  for k, v in shapes.items()}
    _write_random(out, shapes, zero_centred_norms=False)
    cfg = config.to_dict()
    cfg["architectures"] = [model_cls.__name__]
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    (out / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR, indent=2) + "\n")


BUILDERS = {
    "qwen3-vl-2b": build_qwen3_vl,
    "qwen3-vl-30b-a3b-2l": lambda out: build_qwen3_vl(out, moe=True),
    "qwen3-asr-0.6b": build_qwen3_asr,
    "paddleocr-vl-0.9b": build_paddleocr_vl,
    "qwen3.5-4b-text-4l": lambda out: build_qwen35_text(out, 4),
    "qwen3.5-4b-text-8l": lambda out: build_qwen35_text(out, 8),
}


def ensure_checkpoint(name: str, workdir: Path, timeout: float) -> Path:
    ckpt = workdir / "checkpoints" / name
    if (ckpt / ".complete").is_file():
        return ckpt
    if ckpt.exists():
        shutil.rmtree(ckpt)
    tmp = ckpt.with_name(name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"building random checkpoint {name} ...", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--_build", name, str(tmp)], cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"building {name} failed (exit {proc.returncode})")
    (tmp / ".complete").write_text("")
    tmp.rename(ckpt)
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"  {name}: {size / MB:.0f} MB of bf16 in {time.perf_counter() - t0:.0f} s", flush=True)
    return ckpt


# ---- llama.cpp's converter -----------------------------------------------------------------------------------

def find_llama_cpp(arg: Path | None, workdir: Path) -> Path:
    """--llama-cpp, else $LLAMA_CPP_DIR, else a cached llama-cpp-python sdist (fetched once with pip)."""
    given = arg or (Path(os.environ["LLAMA_CPP_DIR"]) if os.environ.get("LLAMA_CPP_DIR") else None)
    if given is not None:
        tree = converter_tree(given.expanduser().resolve())
        if tree is None:
            sys.exit(f"{given}: no convert_hf_to_gguf.py + gguf-py there (nor under vendor/llama.cpp)")
        return tree
    print(f"llama.cpp's converter: from {workdir / 'llama-cpp-src'} (fetched with pip the first time) ...", flush=True)
    try:
        return cached_or_fetched(workdir / "llama-cpp-src")
    except RuntimeError as exc:
        sys.exit(f"llama.cpp's converter: {exc}")


def llama_cmd(tree: Path, ckpt: Path, outfile: Path, outtype: str, mmproj: bool) -> list[str]:
    return converter_command(tree, ckpt, outfile, "--outtype", outtype, *(["--mmproj"] if mmproj else []))


def smt_cmd(*args: str, overlay: Path | None = None) -> list[str]:
    if overlay is not None:
        return [sys.executable, "-m", "smt_convert", *args]
    exe = shutil.which("smt-convert")
    return ([exe] if exe else [sys.executable, "-m", "smt_convert"]) + list(args)


def smt_overlay(tree: Path, workdir: Path) -> Path:
    """An import overlay for running smt-convert from another checkout of this repo (e.g. `git archive <commit> |
    tar -x -C DIR`, for before/after numbers at fixed commits while the working tree moves): a directory
    where `smt_convert` and its subpackages are symlinks laid out as pyproject's package-dir says. Put it first
    on PYTHONPATH."""
    import tomllib

    tree = tree.resolve()
    dirs = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    overlay = workdir / "smt-overlay" / (tree.name + "-" + hashlib.sha1(str(tree).encode()).hexdigest()[:8])
    if overlay.exists():
        shutil.rmtree(overlay)
    for pkg, src in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        dst = overlay.joinpath(*pkg.split("."))
        if dst.exists() or dst.is_symlink():  # already inside a symlinked parent that maps the same way
            if dst.resolve() == (tree / src).resolve():
                continue
            sys.exit(f"{tree}: package-dir {pkg} -> {src} conflicts with its parent's folder")
        if pkg.count(".") == 0:  # top package: a real directory holding links to its files and subpackages
            dst.mkdir(parents=True)
            for f in (tree / src).iterdir():
                (dst / f.name).symlink_to(f)
        else:
            dst.symlink_to(tree / src, target_is_directory=True)
    return overlay


# ---- measuring ---------------------------------------------------------------------------------------------

def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of `root` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def measure(cmd: list[str], log: Path, timeout: float, max_rss: float, env: dict | None = None) -> dict:
    """Run `cmd` in its own process group; wall time, ru_maxrss (os.wait4), sampled tree RSS; kill it on
    timeout or when the tree's RSS passes `max_rss` bytes."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        state = {"peak": 0, "killed": None}
        done = threading.Event()

        def watch():
            while not done.wait(0.2):
                rss = _tree_rss(proc.pid)
                state["peak"] = max(state["peak"], rss)
                reason = (f"timeout {timeout:.0f} s" if time.perf_counter() - t0 > timeout else
                          f"RSS {rss / 2**30:.1f} GB > {max_rss / 2**30:.1f} GB" if rss > max_rss else None)
                if reason and not state["killed"]:
                    state["killed"] = reason
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"loadavg_1min_at_end": round(os.getloadavg()[0], 2), "seconds": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "tree_rss_sampled_mb": round(state["peak"] / MB), "exit": proc.returncode,
            "killed": state["killed"], "log": str(log)}


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / MB
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB if path.exists() else 0.0


# ---- the cases -----------------------------------------------------------------------------------------------

CKPT_OF = {"asr": "qwen3-asr-0.6b", "paddle": "paddleocr-vl-0.9b", "qvl": "qwen3-vl-2b",
           "qvlmoe": "qwen3-vl-30b-a3b-2l",
           "qwen35-4l": "qwen3.5-4b-text-4l", "qwen35-8l": "qwen3.5-4b-text-8l"}

# (case id, groups it belongs to, checkpoint key, tool, description)
CASES = [
    ("llama-asr-text", {"asr", "llama"}, "asr", "llama.cpp", "Qwen3-ASR-0.6B text GGUF f16"),
    ("llama-asr-mmproj", {"asr", "llama"}, "asr", "llama.cpp", "Qwen3-ASR-0.6B mmproj (audio encoder)"),
    ("smt-asr-noverify", {"asr", "smt"}, "asr", "smt-convert", "qwen3-asr --no-verify (f16 + fp32 encoders)"),
    ("smt-asr-verify", {"asr", "smt", "verify"}, "asr", "smt-convert", "qwen3-asr (f16, with verification)"),
    ("smt-asr-q8", {"asr", "smt", "verify"}, "asr", "smt-convert", "qwen3-asr --outtype q8_0 (with verification)"),
    # issue 17: a K-quant bundle against llama.cpp's own path to the same file (convert f16, then llama-quantize's
    # function, llama_model_quantize, run here through llama-cpp-python: the binary is not part of that package)
    ("llama-asr-q4km", {"asr", "llama", "kquant"}, "asr", "llama.cpp",
     "Qwen3-ASR-0.6B text GGUF f16, then llama_model_quantize q4_k_m"),
    ("smt-asr-q4km", {"asr", "smt", "kquant"}, "asr", "smt-convert",
     "qwen3-asr --outtype q4_k_m --no-verify (text + fp32 encoders)"),
    # llama.cpp's own quantiser refuses its converter's Qwen3-ASR file (no rope.dimension_sections, README), so the
    # like-for-like K-quant comparison is Qwen3.5 text, which both convert
    ("llama-qwen35-4l-q4km", {"qwen35", "llama", "kquant"}, "qwen35-4l", "llama.cpp",
     "Qwen3.5-4B-width text, 4 layers, f16 then llama_model_quantize q4_k_m"),
    ("smt-qwen35-4l-q4km", {"qwen35", "smt", "kquant"}, "qwen35-4l", "smt-convert",
     "qwen3.5 --outtype q4_k_m --no-verify, 4 layers"),
    ("llama-paddle-text", {"paddle", "llama"}, "paddle", "llama.cpp", "PaddleOCR-VL text GGUF f16"),
    ("llama-paddle-mmproj", {"paddle", "llama"}, "paddle", "llama.cpp", "PaddleOCR-VL mmproj (vision)"),
    ("smt-paddle", {"paddle", "smt", "verify"}, "paddle", "smt-convert", "paddleocr-vl (defaults, with verification)"),
    ("llama-qwen35-4l", {"qwen35", "llama"}, "qwen35-4l", "llama.cpp", "Qwen3.5-4B-width text, 4 layers, q8_0"),
    ("llama-qwen35-8l", {"qwen35", "llama"}, "qwen35-8l", "llama.cpp", "Qwen3.5-4B-width text, 8 layers, q8_0"),
    ("smt-qwen35-4l", {"qwen35", "smt", "verify"}, "qwen35-4l", "smt-convert", "qwen3.5 --outtype q8_0, 4 layers"),
    ("smt-qwen35-8l", {"qwen35", "smt", "verify"}, "qwen35-8l", "smt-convert", "qwen3.5 --outtype q8_0, 8 layers"),
    # issue 19: Qwen3-VL-2B widths (text + mmproj against our text GGUF + DeepStack vision ONNX)
    ("llama-qvl-text", {"qvl", "llama"}, "qvl", "llama.cpp", "Qwen3-VL-2B text GGUF f16"),
    ("llama-qvl-mmproj", {"qvl", "llama"}, "qvl", "llama.cpp", "Qwen3-VL-2B mmproj (vision + DeepStack)"),
    ("smt-qvl-noverify", {"qvl", "smt"}, "qvl", "smt-convert", "qwen3-vl --no-verify (f16 + fp32 vision 768x768)"),
    ("smt-qvl-verify", {"qvl", "smt", "verify"}, "qvl", "smt-convert", "qwen3-vl --image-size 384 (with verification)"),
    ("llama-qvlmoe-text", {"qvlmoe", "llama"}, "qvlmoe", "llama.cpp", "Qwen3-VL-30B-A3B widths, 2 layers, text f16"),
    ("llama-qvlmoe-mmproj", {"qvlmoe", "llama"}, "qvlmoe", "llama.cpp", "Qwen3-VL-30B-A3B mmproj"),
    ("smt-qvlmoe-verify", {"qvlmoe", "smt", "verify"}, "qvlmoe", "smt-convert",
     "qwen3-vl-moe --image-size 384, 2 layers (with verification)"),
]


def case_command(case: str, ckpt: Path, out: Path, tree: Path | None,
                 overlay: Path | None = None) -> tuple[list[str], dict | None]:
    env = dict(os.environ)
    if case.startswith("llama-"):
        assert tree is not None
        env[PRE_TOKENIZER_ENV] = "qwen35" if "qwen35" in case else "qwen2"
        env.pop("NO_LOCAL_GGUF", None)
        mmproj = case.endswith("-mmproj")
        outtype = "q8_0" if "qwen35" in case and not case.endswith("-q4km") else "f16"
        cmd = llama_cmd(tree, ckpt, out / ("mmproj.gguf" if mmproj else "text.gguf"), outtype, mmproj)
        # Qwen3.5: no MTP block in our checkpoint (smt-convert drops it anyway); without --no-mtp llama.cpp
        # asserts that it finds one.
        cmd += ["--no-mtp"] if "qwen35" in case else []
        if case.endswith("-q4km"):  # the converter, then the quantiser, as one measured process tree
            quantize = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
                        "from smt_convert.converters.kquant import quantize_gguf; "
                        f"quantize_gguf({str(out / 'text.gguf')!r}, {str(out / 'text-q4km.gguf')!r}, 'q4_k_m')")
            return ["sh", "-c", f"{shlex.join(cmd)} && {shlex.join([sys.executable, '-c', quantize])}"], env
        return cmd, env
    arch = {"asr": "qwen3-asr", "paddle": "paddleocr-vl", "qwen35": "qwen3.5", "qvl": "qwen3-vl",
            "qvlmoe": "qwen3-vl-moe"}[case.split("-")[1]]
    extra = {"smt-asr-noverify": ["--no-verify"], "smt-qvl-noverify": ["--no-verify"],
             "smt-qvl-verify": ["--image-size", "384"], "smt-qvlmoe-verify": ["--image-size", "384"], "smt-asr-q8": ["--outtype", "q8_0"],
             "smt-asr-q4km": ["--outtype", "q4_k_m", "--no-verify"],
             "smt-qwen35-4l-q4km": ["--outtype", "q4_k_m", "--no-verify"],
             "smt-qwen35-4l": ["--outtype", "q8_0"], "smt-qwen35-8l": ["--outtype", "q8_0"]}.get(case, [])
    if overlay is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(overlay), *filter(None, [env.get("PYTHONPATH")])])
    return smt_cmd(arch, str(ckpt), str(out), "--force", *extra, overlay=overlay), env


# ---- report --------------------------------------------------------------------------------------------------

def _fmt_status(r: dict) -> str:
    if r.get("killed"):
        return f"killed ({r['killed']})"
    return "ok" if r["exit"] == 0 else f"exit {r['exit']}"


def ratios(res: dict[str, dict]) -> list[dict]:
    """The issue-8 targets, from whatever was measured."""
    def ok(*ids):
        return all(i in res and res[i]["exit"] == 0 for i in ids)

    rows = []
    if ok("llama-asr-text", "llama-asr-mmproj"):
        lw = res["llama-asr-text"]["seconds"] + res["llama-asr-mmproj"]["seconds"]
        lr = max(res["llama-asr-text"]["peak_rss_mb"], res["llama-asr-mmproj"]["peak_rss_mb"])
        lc = sum(res[i].get("cpu_s", float("nan")) for i in ("llama-asr-text", "llama-asr-mmproj"))
        if "smt-asr-noverify" in res:
            s = res["smt-asr-noverify"]
            rows.append({"target": "(load-insensitive) ASR --no-verify CPU time / llama.cpp",
                         "value": s.get("cpu_s", float("nan")) / lc, "unit": "x", "limit": None,
                         "complete": ok("smt-asr-noverify")})
            rows.append({"target": "ASR --no-verify wall / llama.cpp (text+mmproj)", "value": s["seconds"] / lw,
                         "unit": "x", "limit": 0.67, "complete": ok("smt-asr-noverify")})
            rows.append({"target": "ASR --no-verify peak RSS / llama.cpp (max of the two)",
                         "value": s["peak_rss_mb"] / lr, "unit": "x", "limit": 1.0, "complete": ok("smt-asr-noverify")})
        if "smt-asr-verify" in res:
            s = res["smt-asr-verify"]
            rows.append({"target": "ASR with verification wall / llama.cpp", "value": s["seconds"] / lw,
                         "unit": "x", "limit": 2.0, "complete": ok("smt-asr-verify")})
            rows.append({"target": "(load-insensitive) ASR with verification CPU time / llama.cpp",
                         "value": s.get("cpu_s", float("nan")) / lc, "unit": "x", "limit": None,
                         "complete": ok("smt-asr-verify")})
    if "smt-asr-verify" in res:
        s = res["smt-asr-verify"]
        rows.append({"target": "ASR with verification peak RSS", "value": s["peak_rss_mb"] / 1024, "unit": "GB",
                     "limit": 2.5, "complete": ok("smt-asr-verify")})
    if "smt-paddle" in res:
        s = res["smt-paddle"]
        rows.append({"target": "PaddleOCR-VL defaults wall", "value": s["seconds"], "unit": "s", "limit": 60,
                     "complete": ok("smt-paddle")})
        rows.append({"target": "PaddleOCR-VL defaults peak RSS", "value": s["peak_rss_mb"] / 1024, "unit": "GB",
                     "limit": 2.5, "complete": ok("smt-paddle")})
    if "smt-qwen35-4l" in res and "smt-qwen35-8l" in res:
        rows.append({"target": "Qwen3.5 q8_0 peak RSS 8 layers / 4 layers",
                     "value": res["smt-qwen35-8l"]["peak_rss_mb"] / res["smt-qwen35-4l"]["peak_rss_mb"],
                     "unit": "x", "limit": 1.15, "complete": ok("smt-qwen35-4l", "smt-qwen35-8l")})
    if ok("llama-qwen35-4l", "llama-qwen35-8l"):
        rows.append({"target": "(reference) llama.cpp Qwen3.5 q8_0 peak RSS 8 / 4 layers",
                     "value": res["llama-qwen35-8l"]["peak_rss_mb"] / res["llama-qwen35-4l"]["peak_rss_mb"],
                     "unit": "x", "limit": None, "complete": True})
    if ok("llama-qvl-text", "llama-qvl-mmproj"):
        lw = res["llama-qvl-text"]["seconds"] + res["llama-qvl-mmproj"]["seconds"]
        lr = max(res["llama-qvl-text"]["peak_rss_mb"], res["llama-qvl-mmproj"]["peak_rss_mb"])
        for case, what in (("smt-qvl-noverify", "--no-verify"), ("smt-qvl-verify", "with verification")):
            if case in res:
                rows.append({"target": f"Qwen3-VL-2B {what} wall / llama.cpp (text+mmproj)",
                             "value": res[case]["seconds"] / lw, "unit": "x", "limit": None, "complete": ok(case)})
                rows.append({"target": f"Qwen3-VL-2B {what} peak RSS / llama.cpp (max of the two)",
                             "value": res[case]["peak_rss_mb"] / lr, "unit": "x", "limit": None,
                             "complete": ok(case)})
    for r in rows:
        r["value"] = round(r["value"], 3)
        r["met"] = None if r["limit"] is None else bool(r["complete"] and r["value"] <= r["limit"])
    return rows


def print_report(res: dict[str, dict], targets: list[dict]) -> None:
    print("\n| case | what | wall | CPU (user+sys) | peak RSS (ru_maxrss) | tree RSS (sampled) | output | status |")
    print("|---|---|---|---|---|---|---|---|")
    for case, _, _, _, desc in CASES:
        if case in res:
            r = res[case]
            cpu = f"{r['cpu_s']:.1f} s" if "cpu_s" in r else "-"
            print(f"| {case} | {desc} | {r['seconds']:.1f} s | {cpu} | {r['peak_rss_mb']} MB | {r['tree_rss_sampled_mb']} MB"
                  f" | {r['output_mb']:.0f} MB | {_fmt_status(r)} |")
    if targets:
        print("\n| target | measured | limit | met |")
        print("|---|---|---|---|")
        for t in targets:
            unit = t["unit"]
            lim = "-" if t["limit"] is None else f"<= {t['limit']}{unit if unit != 'x' else 'x'}"
            met = "-" if t["met"] is None else ("yes" if t["met"] else "NO") + ("" if t["complete"] else " (run failed)")
            val = f"{t['value']:.2f}{unit}" if unit == "x" else f"{t['value']:.1f} {unit}"
            print(f"| {t['target']} | {val} | {lim} | {met} |")


# ---- main ----------------------------------------------------------------------------------------------------

MODEL_GROUPS = {"asr", "paddle", "qwen35", "qvl", "qvlmoe"}


def select(only: str | None) -> list[str]:
    if not only:
        return [c[0] for c in CASES]
    words = {w.strip() for w in only.split(",") if w.strip()}
    known = {c[0] for c in CASES} | set().union(*(c[1] for c in CASES))
    if unknown := words - known:
        sys.exit(f"--only: unknown {sorted(unknown)}; cases and groups: {sorted(known)}")
    models, tools = words & MODEL_GROUPS, words - MODEL_GROUPS - {c[0] for c in CASES}
    picked = [c[0] for c in CASES if c[0] in words or ((models or tools) and (not models or c[1] & models)
                                                          and (not tools or c[1] & tools))]
    return picked


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--_build":
        sys.path.insert(0, str(ROOT))
        BUILDERS[sys.argv[2]](Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/smt-bench-convert"))
    ap.add_argument("--only", help="comma-separated cases or groups (asr, paddle, qwen35, llama, smt, verify); "
                                   "model groups combined with tool groups intersect: 'asr,llama'")
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp tree or unpacked llama-cpp-python sdist "
                                                   "(default $LLAMA_CPP_DIR, else fetched once with pip)")
    ap.add_argument("--smt-tree", type=Path, help="run smt-convert from this checkout of the repo (e.g. "
                    "`git archive HEAD | tar -x -C DIR`) instead of the installed one")
    ap.add_argument("--json", type=Path, help="write all results and target ratios here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per conversion (default 1800)")
    ap.add_argument("--max-rss-gb", type=float, default=20, help="kill a conversion whose process tree passes this")
    ap.add_argument("--keep-outputs", action="store_true", help="keep each conversion's output (default: delete)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                    help="only print the tables from earlier --json files (merged; later files win)")
    args = ap.parse_args()
    if args.report:
        merged: dict[str, dict] = {}
        for f in args.report:
            merged.update(json.loads(f.read_text())["results"])
        print_report(merged, ratios(merged))
        return
    if args.list:
        for case, groups, ck, tool, desc in CASES:
            print(f"{case:20s} {tool:12s} {desc}   groups: {','.join(sorted(groups))}")
        return
    cases = select(args.only)
    workdir = args.workdir.resolve()
    tree = find_llama_cpp(args.llama_cpp, workdir) if any(c.startswith("llama-") for c in cases) else None
    if tree:
        print(f"llama.cpp converter: {tree / 'convert_hf_to_gguf.py'}", flush=True)
    overlay = smt_overlay(args.smt_tree, workdir) if args.smt_tree else None
    if overlay:
        probe = subprocess.run([sys.executable, "-c", "import smt_convert; print(smt_convert.__file__)"],
                               env={**os.environ, "PYTHONPATH": str(overlay)}, capture_output=True, text=True)
        print(f"smt-convert from {args.smt_tree} ({probe.stdout.strip() or probe.stderr.strip()[-300:]})")
    results: dict[str, dict] = {}
    for case, _, ck, tool, desc in CASES:
        if case not in cases:
            continue
        ckpt = ensure_checkpoint(CKPT_OF[ck], workdir, timeout=3600)
        out = workdir / "out" / case
        if out.exists():
            shutil.rmtree(out)
        if case.startswith("llama-"):
            out.mkdir(parents=True)
        cmd, env = case_command(case, ckpt, out, tree, overlay)
        print(f"[{case}] {desc} ...", flush=True)
        r = measure(cmd, workdir / "logs" / f"{case}.log", args.timeout, args.max_rss_gb * 2**30, env)
        r.update(tool=tool, what=desc, checkpoint=str(ckpt), output_mb=round(_size_mb(out), 1),
                 command=[c if c != WRAPPER else "<llama wrapper>" for c in cmd])
        results[case] = r
        print(f"  {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']} MB (tree {r['tree_rss_sampled_mb']} MB), "
              f"{_fmt_status(r)}; log {r['log']}", flush=True)
        if not args.keep_outputs and out.exists():
            shutil.rmtree(out)
    targets = ratios(results)
    print_report(results, targets)
    if args.json:
        meta = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "machine": platform.machine(),
                "llama_cpp": str(tree) if tree else None, "smt_tree": str(args.smt_tree or ROOT), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "wrapper_note": "llama.cpp run via a wrapper that only adds a pre-tokenizer fallback"}
        args.json.write_text(json.dumps({"meta": meta, "results": results, "targets": targets}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
