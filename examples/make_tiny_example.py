"""Write a tiny, randomly initialised Qwen3-ASR checkpoint (both layouts available) for trying the tool.

No download: the model comes from transformers' own classes, the tokenizer is trained in-process.

    python examples/make_tiny_example.py ./tiny-qwen3-asr [--layout original] [--shards 2]
"""

import argparse
from pathlib import Path

from smt_convert.converters.tiny_checkpoints import make_tiny_qwen3_asr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", type=Path)
    ap.add_argument("--layout", choices=["native", "original"], default="native")
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    make_tiny_qwen3_asr(args.output, layout=args.layout, shards=args.shards)
    print(f"tiny Qwen3-ASR checkpoint ({args.layout} layout) written to {args.output}")


if __name__ == "__main__":
    main()
