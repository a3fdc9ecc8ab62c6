"""Benchmark: the numpy runtime's text decoder vs llama.cpp (llama-cpp-python) on one GGUF.

Builds a random-weight `qwen3vl` GGUF with the real Qwen3-ASR-0.6B text sizes (hidden 1024, 28 layers,
16 heads, 8 kv heads, head_dim 128, ffn 3072, vocab 151936, tied embedding) in the chosen type, then, each
in a fresh process so its peak RSS (VmHWM) is its own:
- ours: load, prefill PROMPT tokens, GEN greedy decode steps (first forward includes packing the weights;
  reported separately as "first prefill", then a second prefill on a fresh cache is the steady one);
- llama.cpp: the same token ids, the same n_threads, greedy on its logits.
Random weights are fine: speed and memory do not depend on the values. Not a test: run it by hand.

    python benchmarks/bench_runtime.py --workdir /tmp/bench-rt [--type q8_0] [--threads 2] [--layers 28]
        [--budget 1G] [--skip-llama]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZE = dict(hidden=1024, n_layer=28, n_head=16, n_kv=8, head_dim=128, ff=3072, vocab=151936)
PROMPT, GEN = 64, 32


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable unicode table (so the vocab's first 256 tokens are the byte tokens)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def build_gguf(path: Path, qtype_name: str, n_layer: int) -> None:
    """The 0.6B text sizes with a minimal byte-level BPE vocabulary (256 byte tokens, one merge, fillers), so
    llama.cpp loads it too."""
    from smt_convert.testing.random_gguf import write_random_qwen3vl

    tokens = byte_chars() + ["ĠĠ"] + [f"<t{i}>" for i in range(SIZE["vocab"] - 257)]
    write_random_qwen3vl(path, SIZE, n_layer, qtype_name, scale=0.02, rope_sections=(24, 20, 20, 0), context=4096,
                         tokens=tokens)


def prompt_ids() -> list[int]:
    return [int(i) for i in np.random.default_rng(1).integers(300, SIZE["vocab"] - 2, PROMPT)]


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- the two measurements (each runs in its own process) ---------------------------------------------


def run_ours(path: str, threads: int, budget: str | None, qmatmul: str = "exact") -> dict:
    if budget:
        os.environ["SMT_RUNTIME_MEMORY_BUDGET"] = budget
    os.environ["SMT_RUNTIME_QMATMUL"] = qmatmul
    os.environ["SMT_RUNTIME_THREADS"] = str(threads)
    from smt_convert.runtime.decoders import load_decoder
    from smt_convert.runtime.gguf_model import GGUFModel

    t0 = time.perf_counter()
    dec = load_decoder(GGUFModel(path))
    load_s = time.perf_counter() - t0
    ids = prompt_ids()

    def once():
        cache = dec.new_cache()
        t = time.perf_counter()
        logits = dec.forward(dec.embed(ids), np.arange(PROMPT), cache, logits="last")[-1]
        pre = time.perf_counter() - t
        toks, t = [], time.perf_counter()
        for step in range(GEN):
            tok = int(np.argmax(logits))
            toks.append(tok)
            logits = dec.forward(dec.embed([tok]), np.array([PROMPT + step]), cache, logits="last")[-1]
        return pre, time.perf_counter() - t, toks

    first_pre, first_dec, _ = once()
    pre, dec_s, toks = once()
    store = getattr(dec, "weights", None)
    return {"load_s": load_s, "first_prefill_s": first_pre, "prefill_s": pre, "decode_s": dec_s,
            "first_decode_s": first_dec, "peak_rss_mb": vmhwm_mb(), "tokens": toks,
            "cached_mb": store.cached_bytes / 2**20 if store is not None else None}


def run_llama(path: str, threads: int) -> dict:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, n_threads_batch=threads, n_batch=PROMPT,
                          verbose=False, logits_all=False)
    load_s = time.perf_counter() - t0
    ids = prompt_ids()

    n_vocab = llm.n_vocab()

    def last_logits():  # logits_all=False: llama.cpp keeps only the last row's logits
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))

    def once():
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        pre = time.perf_counter() - t
        toks, t = [], time.perf_counter()
        for _ in range(GEN):
            tok = int(np.argmax(last_logits()))
            toks.append(tok)
            llm.eval([tok])
        return pre, time.perf_counter() - t, toks

    first_pre, first_dec, _ = once()
    pre, dec_s, toks = once()
    return {"load_s": load_s, "first_prefill_s": first_pre, "prefill_s": pre, "decode_s": dec_s,
            "first_decode_s": first_dec, "peak_rss_mb": vmhwm_mb(), "tokens": toks}


def in_subprocess(which: str, *args) -> dict:
    env = dict(os.environ)
    threads = str(args[1])
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_runtime as b; "
            f"print('@@' + json.dumps(b.run_{which}(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("@@", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-runtime"))
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=SIZE["n_layer"])
    ap.add_argument("--budget", default=None, help="SMT_RUNTIME_MEMORY_BUDGET for our runtime (default: its own)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--qmatmul", nargs="+", default=["exact", "int8"],
                    help="SMT_RUNTIME_QMATMUL values to run ours with (exact, int8, 0)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"qwen3-asr-0.6b-text-{args.type}-{args.layers}l.gguf"
    if not path.exists():
        t = time.perf_counter()
        build_gguf(path, args.type, args.layers)
        print(f"built {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    size_mb = path.stat().st_size / 2**20

    rows = {f"ours-{m}": in_subprocess("ours", str(path), args.threads, args.budget, m) for m in args.qmatmul}
    if not args.skip_llama:
        rows["llama.cpp"] = in_subprocess("llama", str(path), args.threads)

    print(f"\nGGUF {path.name}: {size_mb:.0f} MiB, {args.layers} layers, {args.type}, threads {args.threads}, "
          f"prompt {PROMPT} + {GEN} greedy steps")
    print(f"{'runtime':<12} {'peak RSS MiB':>12} {'load s':>7} {'prefill tok/s':>13} {'(first)':>8} "
          f"{'decode tok/s':>12} {'(first)':>8}")
    for name, r in rows.items():
        print(f"{name:<12} {r['peak_rss_mb']:>12.0f} {r['load_s']:>7.2f} {PROMPT / r['prefill_s']:>13.1f} "
              f"{PROMPT / r['first_prefill_s']:>8.1f} {GEN / r['decode_s']:>12.2f} {GEN / r['first_decode_s']:>8.2f}")
    print(f"peak RSS limit (GGUF + 1 GiB): {size_mb + 1024:.0f} MiB")
    for name, o in rows.items():
        if name == "llama.cpp":
            continue
        line = f"{name}: weights held {o['cached_mb']:.0f} MiB" if o.get("cached_mb") is not None else name
        if "llama.cpp" in rows:
            l = rows["llama.cpp"]
            same = sum(a == b for a, b in zip(o["tokens"], l["tokens"]))
            line += (f"; vs llama.cpp: prefill {l['prefill_s'] / o['prefill_s']:.2f}x, decode "
                     f"{l['decode_s'] / o['decode_s']:.2f}x; greedy tokens equal to llama.cpp's: {same}/{GEN}")
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"gguf_mb": size_mb, **rows}, indent=1))


if __name__ == "__main__":
    main()
