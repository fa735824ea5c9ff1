"""benchmarks/decode_variants.py turns each decode-step change off in turn: every variant runs and
keeps stock Hugging Face's greedy tokens (fp32)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_variant_runs_and_keeps_stock_tokens(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("decode_variants", None)
    import decode_variants

    decode_variants.main(["--model", "tiny-gemma3", "--new-tokens", "4", "--rounds", "1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "ms/step" in ln]
    assert [ln.split()[0] for ln in lines] == list(decode_variants.VARIANTS)
    assert all("tokens == stock" in ln for ln in lines), lines
