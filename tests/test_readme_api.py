"""The Python API snippets run as written, in order, on ``tiny-llama`` (for ``load_model()``): the docs
site's Python API guide (``docs/guides/python-api.md``, moved there from the README) and the README's
short tour."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_GUIDE = ROOT / "docs" / "guides" / "python-api.md"
README = ROOT / "README.md"


def api_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_GUIDE.read_text(), flags=re.S)


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_api_covers_the_pipeline():
    code = "\n".join(api_blocks())
    for name in ("load_model(", "capture(", "build_mask(", "recall_study(", "generate(", "run_frontier(",
                 "neuron_profile("):
        assert name in code, f"the Python API guide lacks {name}"


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


def test_readme_tour_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    blocks = readme_blocks()
    assert len(blocks) == 1 and "load_model()" in blocks[0] and "generate(" in blocks[0]
    namespace: dict = {}
    src = blocks[0].replace("load_model()", 'load_model("tiny-llama")')
    exec(compile(src, "README tour", "exec"), namespace)  # noqa: S102
    assert namespace["cap"].acts.ndim == 3 and isinstance(namespace["out"].text, str)


def test_getting_started_snippets_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    page = (ROOT / "docs" / "getting-started.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for i, block in enumerate(blocks):
        src = block.replace("load_model()", 'load_model("tiny-llama")')
        exec(compile(src, f"Getting started block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["out"].text is not None and 0 < namespace["out"].density <= 1
