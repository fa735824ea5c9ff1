"""The command-line options shared by the decode-step benchmarks (decode_variants.py,
compile_candidate.py): model, dtype, prompt and new tokens, rounds."""

from __future__ import annotations

import argparse


def decode_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=rounds)
    return ap
