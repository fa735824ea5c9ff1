"""The default calibrations shipped under ``tda/assets/calibration`` (:mod:`tda.masks.shipped`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def shipped_files() -> list[Path]:
    from tda.masks.calibrate import SHIPPED_DIR

    return sorted(SHIPPED_DIR.glob("*.json"))


def test_shipped_files_exist_and_cover_the_defaults():
    from tda.masks.shipped import TARGETS

    names = [p.name for p in shipped_files()]
    assert any(n.endswith("-inputs.json") for n in names)
    for t in TARGETS:
        assert any(n.endswith(f"-cett{t:g}.json") for n in names)


def test_a_shipped_file_is_used_only_on_an_exact_match(tiny_llama, tmp_path, monkeypatch):
    """Cache empty + a shipped file of the same name: no calibration; another target: calibrates."""
    from tda.common.data import load_texts
    from tda.masks import calibrate as C

    tiny = tiny_llama
    texts = load_texts(limit=4)
    real = C.calibrate(tiny, texts, 0.2)
    ship = tmp_path / "ship"
    ship.mkdir()
    name = C.cache_path(tiny.model_id, C.data_hash(texts), 0.2).name
    marked = json.loads(real.to_json())
    marked["thresholds"] = [t * 2 for t in marked["thresholds"]]  # recognisably the shipped file's
    (ship / name).write_text(json.dumps(marked))
    monkeypatch.setattr(C, "SHIPPED_DIR", ship)
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    orig = C.calibrate
    monkeypatch.setattr(C, "calibrate", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got = C.load_or_calibrate(tiny, texts, 0.2)
    assert got.thresholds == marked["thresholds"] and not calls
    other = C.load_or_calibrate(tiny, texts, 0.3)  # no shipped file for 0.3: calibrated
    assert calls and other.target == 0.3
    monkeypatch.setattr(C, "SHIPPED_DIR", tmp_path / "none")
    assert C.load_or_calibrate(tiny, texts[:3], 0.2).thresholds != marked["thresholds"]  # other data


_RECOMPUTE = """
import json, sys
from tda.masks.shipped import compute
from tda.models.load import DEFAULT_MODEL, load_model
with open(sys.argv[1], "w") as f:
    json.dump(compute(load_model(DEFAULT_MODEL)), f)
"""


@pytest.mark.slow
def test_shipped_calibrations_match_a_recomputation(tmp_path):
    """Recompute every shipped file on this machine and compare (summation order may differ).

    In a child process: the corpus pass's working set (~1 GB) then does not stack on everything the
    suite's process holds by this point (the suite's peak memory)."""
    out = tmp_path / "fresh.json"
    r = subprocess.run([sys.executable, "-c", _RECOMPUTE, str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = json.loads(out.read_text())
    assert sorted(fresh) == [p.name for p in shipped_files()]
    for p in shipped_files():
        old, new = json.loads(p.read_text()), json.loads(fresh[p.name])
        if "quantiles" in old:
            assert old["data_hash"] == new["data_hash"] and old["n_tokens"] == new["n_tokens"]
            assert sorted(old["quantiles"]) == sorted(new["quantiles"])
            for site, q in old["quantiles"].items():
                np.testing.assert_allclose(q, new["quantiles"][site], rtol=1e-3, atol=1e-5, err_msg=site)
        else:
            assert {k: old[k] for k in ("model_id", "target", "data_hash", "d_ff", "n_layers")} == \
                   {k: new[k] for k in ("model_id", "target", "data_hash", "d_ff", "n_layers")}
            np.testing.assert_allclose(old["thresholds"], new["thresholds"], rtol=1e-3)
            np.testing.assert_allclose(old["densities"], new["densities"], atol=2e-3)


@pytest.mark.slow
def test_fresh_cache_teal_generation_uses_the_shipped_thresholds(tmp_path):
    """Only the converted model in an empty cache: `tda generate --method teal` reads the shipped
    quantiles, calibrates nothing, says what it does on stderr, and decodes."""
    from tda.models.embedded import EMBEDDED_NAME, cache_is_valid, embedded_cache_path

    model_dir = embedded_cache_path()
    if not cache_is_valid(model_dir):
        pytest.skip("the embedded model is not converted in the cache")
    (tmp_path / EMBEDDED_NAME).symlink_to(model_dir, target_is_directory=True)
    env = {**os.environ, "TDA_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tda", "generate", "--method", "teal", "--density", "0.5",
                        "-n", "8", "-p", "The history of the city begins"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "input thresholds: using the shipped calibration" in r.stderr
    assert "-inputs.json" in r.stderr
    assert "calibrating input thresholds" not in r.stderr
    assert not list((tmp_path / "calibration").glob("*-inputs.json"))  # nothing calibrated into the cache
    assert "continuation (8 tokens)" in r.stdout
