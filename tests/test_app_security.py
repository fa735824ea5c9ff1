"""The app listens on this machine only, and its model-folder box reads only allowed roots (issue 28)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tda.common.errors import BadInput
from tda.common.roots import REFUSED, check_model_folder

ROOT = Path(__file__).resolve().parents[1]


def test_config_binds_loopback():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"


def test_streamlit_reads_the_bind_address_from_the_repo():
    """`streamlit run app/main.py` from the repository root picks the file up."""
    code = ("import streamlit.config as c; c.get_config_options(force_reparse=True); "
            "print(c.get_option('server.address'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "127.0.0.1"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    allowed = tmp_path / "models"
    model = allowed / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "id_rsa").write_text("x")
    monkeypatch.setenv("TDA_MODEL_ROOTS", str(allowed))
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "cache" if (tmp_path / "cache").exists() else allowed)
    return allowed, model, outside


def test_a_model_under_an_allowed_root_is_accepted(roots):
    allowed, model, _ = roots
    assert check_model_folder(str(model)) == os.path.realpath(model)
    assert check_model_folder(str(allowed / "x" / ".." / "m")) == os.path.realpath(model)


def test_every_refusal_is_the_same_message(roots, tmp_path):
    allowed, model, outside = roots
    link = allowed / "escape"
    link.symlink_to(outside)  # a symlink out of the root is followed before the check
    not_model = allowed / "empty"
    not_model.mkdir()
    cases = [str(outside), str(outside / "missing"), str(allowed / "missing"), str(link),
             str(allowed / ".." / "secret"), str(not_model), str(model / "config.json"), "~/.ssh", "/etc", ""]
    messages = set()
    for text in cases:
        with pytest.raises(BadInput) as e:
            check_model_folder(text)
        assert str(e.value).startswith(REFUSED)
        messages.add(str(e.value).replace(f"'{text.strip()}'", "'X'"))
    assert len(messages) == 1, messages  # nothing tells an existing path from a missing one


def test_working_directory_and_cache_are_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("TDA_MODEL_ROOTS", raising=False)
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    for root in (tmp_path / "cache", tmp_path / "work"):
        (root / "m").mkdir(parents=True)
        (root / "m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "work")
    assert check_model_folder(str(tmp_path / "cache" / "m"))
    assert check_model_folder("m")
