"""The README's "Python API" snippets run as written, in order, on ``tiny-llama`` (for ``load_model()``)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_covers_the_pipeline():
    code = "\n".join(api_blocks())
    for name in ("load_model(", "capture(", "build_mask(", "recall_study(", "generate(", "run_frontier(",
                 "neuron_profile("):
        assert name in code, f"the Python API section lacks {name}"


def test_readme_python_api_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    blocks = api_blocks()
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        src = block.replace("load_model()", 'load_model("tiny-llama")')
        exec(compile(src, f"README Python API block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "TDA keeps" in out and "recall" in out and "density" in out
    prof = namespace["prof"]
    assert prof["layer"] == 1 and prof["neuron"] == 5 and prof["corpus"]["n_texts"] == 120
