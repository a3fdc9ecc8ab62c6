"""Write a tiny, randomly initialised checkpoint for trying the tool (no download: the model comes from
transformers' own classes, the tokenizer is trained in-process).

    python examples/make_tiny_example.py ./tiny-qwen3-asr [--arch qwen3-asr] [--layout original]
    python examples/make_tiny_example.py ./tiny-ocr --arch paddleocr-vl
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # config-key warnings from transformers are noise here

from smt_convert.testing.checkpoints import TINY_BUILDERS  # noqa: E402

LAYOUTS = {"qwen3-asr", "paddleocr-vl"}  # the builders that can also write the original release layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", type=Path)
    ap.add_argument("--arch", choices=sorted(TINY_BUILDERS), default="qwen3-asr")
    ap.add_argument("--layout", choices=["native", "original"], default="native")
    args = ap.parse_args()
    if args.layout != "native" and args.arch not in LAYOUTS:
        ap.error(f"--layout original: {args.arch} has only the transformers-native layout")
    kwargs = {"layout": args.layout} if args.arch in LAYOUTS else {}
    TINY_BUILDERS[args.arch](args.output, **kwargs)
    print(f"tiny {args.arch} checkpoint ({args.layout} layout) written to {args.output}")


if __name__ == "__main__":
    main()
