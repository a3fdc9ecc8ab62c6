"""Benchmark: convert a random-weight vision-language checkpoint built from a config.json.

Presets: `paddleocr-vl-0.9b` (transformers' PaddleOCRVLConfig defaults, documented there as the
PaddlePaddle/PaddleOCR-VL checkpoint's: the real 0.9B hyperparameters) and `qwen3.5-0.8b-approx`
(APPROX_0_8B below: text depth/width/heads/vocab from public model notes on Qwen3.5-0.8B, the other sizes
assumed and marked). Or give a real `config.json` (a few KB, no weights needed) with --config.
Reports time, peak RSS (VmHWM, each phase in a fresh process) and throughput for the text GGUF and the
vision ONNX, and the numpy runtime's prefill speed.

    python benchmarks/bench_vision.py --preset paddleocr-vl-0.9b --workdir /tmp/bench-pv
    python benchmarks/bench_vision.py --preset qwen3.5-0.8b-approx --image-size 384 --workdir /tmp/bench35
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APPROX_0_8B = {
    "architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
    "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
    "vision_end_token_id": 248054, "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_5_text", "vocab_size": 248320, "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 8, "num_key_value_heads": 2, "full_attention_interval": 4,
        "head_dim": 256, "intermediate_size": 3584,                                   # assumed
        "linear_num_key_heads": 16, "linear_num_value_heads": 16,                     # assumed
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,  # assumed
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    },
    "vision_config": {                                                                 # assumed (Qwen3-VL-2B-like)
        "model_type": "qwen3_5", "depth": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 1024,
        "num_position_embeddings": 2304, "in_channels": 3, "hidden_act": "gelu_pytorch_tanh",
    },
}


def paddleocr_config() -> dict:
    from transformers import PaddleOCRVLConfig

    config = PaddleOCRVLConfig().to_dict()
    config["architectures"] = ["PaddleOCRVLForConditionalGeneration"]
    return config


PRESETS = {"qwen3.5-0.8b-approx": lambda: APPROX_0_8B, "paddleocr-vl-0.9b": paddleocr_config}


def make_checkpoint(config: dict, out: Path) -> None:
    """Random bf16 weights for every tensor the plugin expects, in two shards, plus a tiny tokenizer of the
    model's kind (its vocabulary is padded to the real size in the GGUF)."""
    import torch
    from safetensors.torch import save_file

    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.plugin import detect_plugin
    from smt_convert.testing.checkpoints import PADDLEOCR_PREPROCESSOR, QWEN3_5_SPECIALS
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer, build_spm_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    plugin = detect_plugin(config, out / "config.json")
    if plugin.name == "paddleocr-vl":
        build_spm_tokenizer(out)
        (out / "preprocessor_config.json").write_text(json.dumps(PADDLEOCR_PREPROCESSOR))
    else:
        build_qwen_bpe_tokenizer(out, specials=QWEN3_5_SPECIALS)
    hp = plugin.read_hparams(Checkpoint(out, config, {}, []))
    shapes = plugin.expected_tensors(hp)
    names = sorted(shapes)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, part in enumerate((names[::2], names[1::2])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16) for n in part},
                  str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


HWM = ("def hwm():\n    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))"
       ".split()[1]) / 1024\n")

PHASE_GGUF = HWM + """
import json, sys, time
from pathlib import Path
import gguf, torch
from smt_convert.converters.convert import ConvertOptions, make_plan
from smt_convert.converters.plugin import detect_plugin
from smt_convert.converters.text_gguf import OUTTYPES, write_text_gguf
from smt_convert.converters.tokenizer import build_vocab, write_vocab
ckpt_dir, out, outtype = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
plugin = detect_plugin(json.loads((ckpt_dir / "config.json").read_text()), ckpt_dir / "config.json")
plan, ckpt = make_plan(plugin, ckpt_dir, ConvertOptions(outtype=outtype))
base = hwm()
vocab = build_vocab(plan.tokenizer, plan.hparams.vocab_size, plugin.vocab_pre, eot_token=plugin.eot_token)
def meta(w):
    plugin.text_metadata(w, plan.hparams, plan.stem); w.add_file_type(OUTTYPES[outtype][1]); write_vocab(w, vocab)
types = {k: gguf.GGMLQuantizationType[v] for k, v in plan.text_types.items()}
t0 = time.perf_counter()
write_text_gguf(out, plan.text_arch, plan.text_tensors, types, lambda n: ckpt.load(n).to(torch.float32).numpy(), meta)
dt = time.perf_counter() - t0
src = sum(ckpt.tensors[s].nbytes for t in plan.text_tensors for s in t.sources)
largest = max(info.numel for info in ckpt.tensors.values()) * 4
print(json.dumps({"phase": f"text gguf ({outtype})", "seconds": round(dt, 2), "peak_rss_mb": round(hwm()),
                  "rss_before_mb": round(base), "largest_tensor_f32_mb": round(largest / 2**20),
                  "source_mb": round(src / 2**20), "output_mb": round(out.stat().st_size / 2**20),
                  "throughput_mb_s": round(src / 2**20 / dt, 1)}))
"""

PHASE_ONNX = HWM + """
import json, sys, time
from pathlib import Path
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.convert import ConvertOptions
from smt_convert.converters.onnx_export import export_onnx
from smt_convert.converters.plugin import detect_plugin
ckpt_dir, workdir, dtype = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
size = int(sys.argv[4]) or None
ckpt = Checkpoint.open(ckpt_dir)
plugin = detect_plugin(ckpt.config, ckpt.config_path)
hp = plugin.read_hparams(ckpt, ConvertOptions(image_size=size))
t0 = time.perf_counter()
model = plugin.build_torch_model(ckpt, hp, parts="encoder")
load_s = time.perf_counter() - t0
(spec,) = plugin.encoder_specs(model, hp)
spec.check_inputs = spec.check_inputs[:1]
planned = plugin.encoder_outputs(hp, "bench")[0]
t0 = time.perf_counter()
rep = export_onnx(spec, workdir / planned.file, dtype=dtype, log=lambda m: None)
h, w = hp.vision.image_size
print(json.dumps({"phase": f"onnx vision {h}x{w} ({dtype})", "seconds": round(time.perf_counter() - t0, 1),
                  "model_load_s": round(load_s, 1), "params_m": round(planned.params / 1e6, 1),
                  "output_mb": round((workdir / planned.file).stat().st_size / 2**20),
                  "worst_check": rep.worst(), "peak_rss_mb": round(hwm())}))
"""

PHASE_PREFILL = HWM + """
import json, sys, time
import numpy as np
from smt_convert.runtime.decoders import load_decoder
from smt_convert.runtime.generate import prefill
from smt_convert.runtime.gguf_model import GGUFModel
t0 = time.perf_counter()
dec = load_decoder(GGUFModel(sys.argv[1]))
load_s = time.perf_counter() - t0
n = int(sys.argv[2])
ids = np.random.default_rng(0).integers(0, 400, n)
t0 = time.perf_counter()
prefill(dec, dec.embed(ids), np.arange(n), dec.new_cache())
dt = time.perf_counter() - t0
print(json.dumps({"phase": f"numpy prefill {n} tokens", "seconds": round(dt, 1), "tokens_per_s": round(n / dt, 1),
                  "decoder_load_s": round(load_s, 1), "peak_rss_mb": round(hwm())}))
"""


def run_phase(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"phase failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/smt-bench-vision"))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paddleocr-vl-0.9b")
    ap.add_argument("--config", type=Path, help="a real config.json (overrides --preset)")
    ap.add_argument("--image-size", type=int, default=0, help="vision input side (default: the plugin's)")
    ap.add_argument("--onnx-dtype", default="fp16", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--prefill", type=int, default=512, help="tokens for the numpy prefill timing")
    args = ap.parse_args()
    config = json.loads(args.config.read_text()) if args.config else PRESETS[args.preset]()
    ckpt = args.workdir / "checkpoint"
    if not (ckpt / "config.json").is_file():
        t0 = time.perf_counter()
        make_checkpoint(config, ckpt)
        print(f"random checkpoint written in {time.perf_counter() - t0:.1f}s: {ckpt}")
    for outtype in ("f16", "q4_0"):
        run_phase(PHASE_GGUF, ckpt, args.workdir / f"text-{outtype}.gguf", outtype)
    run_phase(PHASE_ONNX, ckpt, args.workdir, args.onnx_dtype, args.image_size)
    run_phase(PHASE_PREFILL, args.workdir / "text-q4_0.gguf", args.prefill)


if __name__ == "__main__":
    main()
