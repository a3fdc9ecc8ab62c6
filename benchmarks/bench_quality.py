"""Quality of each text type against the Hugging Face model, on one checkpoint, in one run (issue 17).

Builds a small Qwen3.5 text-only checkpoint (transformers' own class, save_pretrained; random weights drawn as
the test builders draw them) with rows of 256 or more, so K-quant super-blocks fit every matrix as they do in
the released models (the tiny test models' 64-wide rows fall back to other types). Then converts it once per
case with verification and reads each bundle's quality report (manifest `quality`): teacher-forced KL
divergence of the next-token distribution against transformers (mean, p99), top-1 agreement, perplexity of the
greedy continuation, and the GGUF's size.

Cases: every type gguf-py writes, the K-quant presets (llama.cpp's quantiser, when llama-cpp-python is
installed), and the Gated-DeltaNet rule switched off (`--tensor-type 'ssm_(alpha|beta)=TYPE'` forces those two
matrices down to the variant's own type) to measure what the rule buys.

    python benchmarks/bench_quality.py --workdir /tmp/bench-quality [--json out.json] [--hidden 512 --layers 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (label, outtype, extra CLI args)
    ("f16", "f16", []),
    ("q8_0", "q8_0", []),
    ("q6_k", "q6_k", []),
    ("q5_k_m", "q5_k_m", []),
    ("q5_0", "q5_0", []),
    ("q4_k_m", "q4_k_m", []),
    ("q4_k_m, ssm_alpha/beta at q4_k", "q4_k_m", ["--tensor-type", r"ssm_(alpha|beta)=q4_k"]),
    ("q4_k_s", "q4_k_s", []),
    ("q4_1", "q4_1", []),
    ("q4_0", "q4_0", []),
    ("q4_0, ssm_alpha/beta at q4_0", "q4_0", ["--tensor-type", r"ssm_(alpha|beta)=q4_0"]),
    ("q3_k_m", "q3_k_m", []),
    ("q2_k", "q2_k", []),
]


def build(workdir: Path, hidden: int, layers: int) -> Path:
    ckpt = workdir / f"qwen3.5-text-h{hidden}-l{layers}"
    if (ckpt / "config.json").is_file():
        return ckpt
    from smt_convert.testing.checkpoints import make_tiny_qwen3_5_text

    types = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * (layers // 4)
    make_tiny_qwen3_5_text(ckpt, text_overrides=dict(
        hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers, layer_types=types,
        num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512), head_dim=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [11, 11, 10], "mrope_interleaved": True},  # Qwen3.5's own
        linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=hidden // 128,
        linear_num_value_heads=hidden // 64), fan_in_scale=True)
    return ckpt


def run_case(ckpt: Path, out: Path, outtype: str, extra: list[str], tokens: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smt_convert", "-q", "qwen3.5", str(ckpt), str(out), "--force",
                           "--outtype", outtype, "--max-new-tokens", str(tokens), *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    manifest = json.loads((out / "manifest.json").read_text())
    gguf = next(f for f in manifest["files"] if f["path"] == manifest["text"]["file"])
    return {"quality": manifest.get("quality"), "gguf_bytes": gguf["size"], "passed": manifest["verification"]["passed"],
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens scored after the prompt")
    ap.add_argument("--only", default=None, help="comma-separated outtypes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = build(args.workdir, args.hidden, args.layers)
    results = []
    for label, outtype, extra in CASES:
        if args.only and outtype not in args.only.split(","):
            continue
        r = run_case(ckpt, args.workdir / "bundles" / label.replace(" ", "_").replace("/", "-").replace(",", ""),
                     outtype, extra, args.tokens)
        results.append({"case": label, **r})
        q = r.get("quality") or {}
        print(f"{label:34s} " + (r["error"] if "error" in r else
              f"{r['gguf_bytes'] / 2**20:7.2f} MiB  KLD mean {q.get('kld_mean', float('nan')):.5f}  p99 "
              f"{q.get('kld_p99', float('nan')):.5f}  top-1 {q.get('top1', float('nan')):.3f}  ppl "
              f"{q.get('ppl') or float('nan'):.3f} (HF {q.get('ppl_reference') or float('nan'):.3f})  {r['seconds']} s"),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"hidden": args.hidden, "layers": args.layers, "results": results}, indent=1))


if __name__ == "__main__":
    main()
