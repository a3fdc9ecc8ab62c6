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

# The builders that can also write the original release layout, and their name for it.
ORIGINAL = {"qwen3-asr": "original", "paddleocr-vl": "original", "qwen3.5-moe": "released"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", type=Path)
    ap.add_argument("--arch", choices=sorted(TINY_BUILDERS), default="qwen3-asr")
    ap.add_argument("--layout", choices=["saved", "original"], default="saved",
                    help="saved: as transformers' save_pretrained writes it (default); original: the release's")
    args = ap.parse_args()
    if args.layout == "original" and args.arch not in ORIGINAL:
        ap.error(f"--layout original: {args.arch} is released as transformers saves it")
    kwargs = {"layout": ORIGINAL[args.arch]} if args.layout == "original" else {}
    TINY_BUILDERS[args.arch](args.output, **kwargs)
    how = "the original release's layout" if args.layout == "original" else "written by transformers' save_pretrained"
    print(f"tiny {args.arch} checkpoint ({how}) written to {args.output}")


if __name__ == "__main__":
    main()
