"""The docs site builds with ``mkdocs build --strict`` (no broken link, anchor or reference), offline,
and every section of the README and the site's pages are reachable from its navigation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]'; dev includes it)")
pytest.importorskip("material", reason="the docs extra: mkdocs-material")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: mkdocstrings[python]")


def test_mkdocs_build_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path),
                            "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "api" / "index.html").exists()
    api = (site / "api" / "index.html").read_text()
    for name in ("load_model", "capture", "build_mask", "generate", "recall_study", "run_frontier"):
        assert f"{name}" in api, f"the API reference lacks {name}"
    assert "Quantized (GGUF) decode" in (site / "guides" / "quantized" / "index.html").read_text()


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
             if "_generated" not in p.parts]
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_no_network_at_build_time():
    """Material's social cards and privacy plugin download assets; fonts come from a CDN unless off."""
    cfg = (ROOT / "mkdocs.yml").read_text()
    assert not re.search(r"^\s*-\s*(social|privacy|optimize)\b", cfg, flags=re.M)
    assert re.search(r"^\s*font:\s*false", cfg, flags=re.M)


def test_readme_is_short_and_points_into_the_site():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links, "the README links no page of the site"
    for link in links:
        assert (ROOT / link).exists(), f"README links a missing page: {link}"
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && streamlit run app/main.py' in text
    assert "python -m pytest -q" in text
