"""Benchmark: convert a random-weight checkpoint with the real Qwen3-ASR hyperparameters.

Reports wall time, peak RSS and throughput for GGUF writing and for each ONNX export, each phase in a
fresh process so its peak RSS is its own. Random weights are fine: speed and memory do not depend on
the values. Not a test: run it by hand.

    python benchmarks/bench_qwen3_asr.py --size 0.6B --workdir /tmp/bench [--outtype f16] [--full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Published Qwen3-ASR hyperparameters (text decoder = Qwen3-0.6B / Qwen3-1.7B).
SIZES = {
    "0.6B": {"text": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                          num_key_value_heads=8, head_dim=128),
             "audio": dict(d_model=896, encoder_layers=18, encoder_attention_heads=14, encoder_ffn_dim=3584)},
    "1.7B": {"text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                          num_key_value_heads=8, head_dim=128),
             "audio": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096)},
}
VOCAB = 151936


def make_checkpoint(size: str, out: Path) -> None:
    """Random bf16 weights in two shards, written tensor by tensor from the plugin's own shape table."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from smt_convert.archs.qwen3_asr.plugin import Hparams, Qwen3ASRPlugin
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    ids = build_qwen_bpe_tokenizer(out)
    t, a = SIZES[size]["text"], SIZES[size]["audio"]
    config = {
        "architectures": ["Qwen3ASRForConditionalGeneration"], "model_type": "qwen3_asr",
        "audio_token_id": ids["<|audio_pad|>"], "tie_word_embeddings": True,
        "audio_config": {"model_type": "qwen3_asr_encoder", "num_mel_bins": 128, "downsample_hidden_size": 480,
                         "output_dim": t["hidden_size"], "n_window": 50, "n_window_infer": 800, **a},
        "text_config": {"model_type": "qwen3", "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                        "max_position_embeddings": 65536,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, **t},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    from smt_convert.converters.checkpoint import Checkpoint

    plugin = Qwen3ASRPlugin()
    hp = plugin.read_hparams(Checkpoint(out, config, {}, []))
    assert isinstance(hp, Hparams)
    shapes = plugin.expected_tensors(hp)
    names = sorted(shapes)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, part in enumerate((names[::2], names[1::2])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16) for n in part}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


PHASE_GGUF = """
import json, sys, time
def hwm():  # peak RSS of this process image in MB (VmHWM; ru_maxrss would include the forking parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

from pathlib import Path
import torch, gguf
from smt_convert.converters.convert import ConvertOptions, make_plan
from smt_convert.converters.plugin import get_plugin
from smt_convert.converters.text_gguf import OUTTYPES, write_text_gguf
from smt_convert.converters.tokenizer import build_bpe_vocab, write_vocab
ckpt_dir, out, outtype = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
plugin = get_plugin("qwen3-asr")
plan, ckpt = make_plan(plugin, ckpt_dir, ConvertOptions(outtype=outtype))
base = hwm()
vocab = build_bpe_vocab(plan.tokenizer, plan.hparams.vocab_size, plugin.vocab_pre, eot_token=plugin.eot_token)
def meta(w):
    plugin.text_metadata(w, plan.hparams, plan.stem); w.add_file_type(OUTTYPES[outtype][1]); write_vocab(w, vocab)
types = {k: gguf.GGMLQuantizationType[v] for k, v in plan.text_types.items()}
largest = max(info.numel for info in ckpt.tensors.values()) * 4
t0 = time.perf_counter()
write_text_gguf(out, plan.text_arch, plan.text_tensors, types, lambda n: ckpt.load(n).to(torch.float32).numpy(), meta)
dt = time.perf_counter() - t0
peak = hwm()
src = sum(ckpt.tensors[s].nbytes for t in plan.text_tensors for s in t.sources)
print(json.dumps({"phase": f"text gguf ({outtype})", "seconds": dt, "peak_rss_mb": peak,
                  "rss_before_mb": base, "largest_tensor_f32_mb": largest / 2**20,
                  "source_mb": src / 2**20, "output_mb": out.stat().st_size / 2**20,
                  "throughput_mb_s": src / 2**20 / dt}))
"""

PHASE_ONNX = """
import json, sys, time
def hwm():  # peak RSS of this process image in MB (VmHWM; ru_maxrss would include the forking parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

from pathlib import Path
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.onnx_export import export_onnx
from smt_convert.converters.plugin import get_plugin
ckpt_dir, workdir, dtype = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
plugin = get_plugin("qwen3-asr")
ckpt = Checkpoint.open(ckpt_dir)
hp = plugin.read_hparams(ckpt)
t0 = time.perf_counter()
model = plugin.build_torch_model(ckpt, hp, parts="encoder")
load_s = time.perf_counter() - t0
rows = []
for spec, planned in zip(plugin.encoder_specs(model, hp), plugin.encoder_outputs(hp, "bench")):
    t0 = time.perf_counter()
    rep = export_onnx(spec, workdir / planned.file, dtype=dtype, log=lambda m: None)
    rows.append({"phase": f"onnx {planned.role} ({dtype})", "seconds": time.perf_counter() - t0,
                 "params_m": planned.params / 1e6, "output_mb": (workdir / planned.file).stat().st_size / 2**20,
                 "worst_check": rep.worst(), "simplified": rep.simplified})
peak = hwm()
print(json.dumps({"model_load_s": load_s, "peak_rss_mb": peak, "exports": rows}))
"""


PEAK_AT_EXIT = ("atexit.register(lambda: print('peak_rss_mb', int(next(l for l in open('/proc/self/status') "
                "if l.startswith('VmHWM')).split()[1]) / 1024, file=sys.stderr))\n")


def run_phase(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"phase failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="0.6B")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/smt-bench"))
    ap.add_argument("--outtype", action="append", help="GGUF types to time (default: f16 and q8_0)")
    ap.add_argument("--onnx-dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--full", action="store_true", help="also time a full `smt-convert` run with verification")
    args = ap.parse_args()
    ckpt = args.workdir / f"qwen3-asr-{args.size}-random"
    if not (ckpt / "config.json").is_file():
        t0 = time.perf_counter()
        make_checkpoint(args.size, ckpt)
        print(f"random checkpoint written in {time.perf_counter() - t0:.1f}s: {ckpt}")
    results = []
    for outtype in args.outtype or ["f16", "q8_0"]:
        results.append(run_phase(PHASE_GGUF, ckpt, args.workdir / f"text-{outtype}.gguf", outtype))
        print(json.dumps(results[-1]))
    onnx = run_phase(PHASE_ONNX, ckpt, args.workdir, args.onnx_dtype)
    print(json.dumps(onnx))
    if args.full:
        out = args.workdir / "bundle"
        t0 = time.perf_counter()
        wrapper = ("import atexit, runpy, sys\n" + PEAK_AT_EXIT +
                   "sys.argv = ['smt-convert'] + sys.argv[1:]\nrunpy.run_module('smt_convert', run_name='__main__')")
        proc = subprocess.run([sys.executable, "-c", wrapper, "qwen3-asr", str(ckpt), str(out), "--force",
                               "--outtype", "q8_0"], capture_output=True, text=True)
        peak = float(proc.stderr.strip().splitlines()[-1].split()[-1])
        print(proc.stdout)
        print(f"full conversion with verification: {time.perf_counter() - t0:.1f}s, peak RSS {peak:.0f} MB, "
              f"exit {proc.returncode}")


if __name__ == "__main__":
    main()
