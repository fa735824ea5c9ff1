"""Cached artefacts verified before use; damaged ones rebuilt or refused in one line (issue 28).

The matrix: each kind of artefact x (truncated, same-size garbled, empty). Fast tests check the
verification itself (nothing is mapped or loaded); the slow ones run the real thing end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tda.common import integrity

REPO = Path(__file__).resolve().parents[1]
DAMAGES = ("truncated", "garbled", "empty")


def damage(p: Path, how: str) -> None:
    """Truncate ``p`` to half, zero 1 KiB in its middle (same size), or empty it."""
    data = p.read_bytes()
    if how == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif how == "garbled":
        mid = len(data) // 2
        n = min(1024, max(1, len(data) // 4))
        junk = bytes((b ^ 0x5A) for b in data[mid:mid + n])  # differs from the original everywhere
        p.write_bytes(data[:mid] + junk + data[mid + n:])
        assert p.stat().st_size == len(data)
    else:
        p.write_bytes(b"")


# ------------------------------------------------------------------------------ integrity basics
def test_sidecar_catches_every_damage(tmp_path):
    for how in DAMAGES:
        f = tmp_path / f"a-{how}.bin"
        f.write_bytes(os.urandom(4096))
        integrity.write_sidecar(f)
        assert integrity.check_sidecar(f) is None
        damage(f, how)
        assert integrity.check_sidecar(f) is not None, how


def test_manifest_stamps_skip_the_hash_but_catch_same_size_damage(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(1 << 16))
    files = integrity.manifest_entries(tmp_path, ["w.bin"])
    calls = []
    real = integrity.file_hash
    monkeypatch.setattr(integrity, "file_hash", lambda p: calls.append(p) or real(p))
    assert integrity.check_manifest(tmp_path, files) == (None, False)
    assert calls == []  # the stamp matched: no hashing
    st = f.stat()
    damage(f, "garbled")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime put back
    problem, _ = integrity.check_manifest(tmp_path, files)
    assert problem and "w.bin" in problem and "content differs" in problem


def test_manifest_restamps_a_copied_but_intact_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(1 << 12))
    files = integrity.manifest_entries(tmp_path, ["w.bin"])
    f.write_bytes(f.read_bytes())  # same content, new stamp
    problem, restamped = integrity.check_manifest(tmp_path, files)
    assert problem is None and restamped
    assert integrity.check_manifest(tmp_path, files) == (None, False)


def test_finite_floats_names_what_is_wrong():
    assert integrity.finite_floats([1.0, 2], "t", length=2) is None
    assert "nan" in integrity.finite_floats([1.0, float("nan")], "t")
    assert "2 values instead of 3" in integrity.finite_floats([1.0, 2.0], "t", length=3)
    assert "not a number" in integrity.finite_floats([1.0, "x"], "t")
    assert "outside" in integrity.finite_floats([1e30], "t", high=1e6)


# ------------------------------------------------------------------------------ kernel library
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_kernel_library_is_removed_not_mapped(tmp_path, how, capsys):
    from tda.engine import kernel_cache

    lib = tmp_path / "kernels" / "tda_kernels_x" / "tda_kernels_x.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(os.urandom(8192))
    kernel_cache.record(lib)
    assert kernel_cache.check_library(lib)
    damage(lib, how)
    assert not kernel_cache.check_library(lib)  # never handed to the dynamic loader
    assert not lib.parent.exists()  # removed: the caller rebuilds it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lib) in err[0] and "rebuilding" in err[0]


@pytest.mark.parametrize("how", DAMAGES)
def test_unrecorded_damaged_kernel_library_is_probed_in_a_child_not_mapped(tmp_path, how, capsys):
    """A library without a recorded hash (from an older version) is loaded in a child process
    first: a damaged one crashes or fails there, and is removed for a rebuild."""
    from tda.engine import kernel_cache

    lib = tmp_path / "k" / "k.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF" + os.urandom(20000))
    damage(lib, how)
    assert not kernel_cache.check_library(lib)
    assert not lib.parent.exists()
    err = capsys.readouterr().err
    assert "unusable" in err and "rebuilding" in err


def test_unrecorded_good_kernel_library_is_probed_and_recorded(tmp_path, capsys):
    if not _cpp_available():
        pytest.skip("C++ kernels unavailable")
    from tda.engine import kernel_cache, kernels

    good = Path(kernels.backend_info()["library"])
    lib = tmp_path / "k" / good.name
    lib.parent.mkdir()
    lib.write_bytes(good.read_bytes())
    assert kernel_cache.check_library(lib)  # loaded in a child, then recorded
    assert integrity.check_sidecar(lib) is None
    assert "checked the cached kernel library" in capsys.readouterr().err


def test_kernel_cache_is_private_and_stale_builds_are_removed(tmp_path, capsys):
    from tda.engine import kernel_cache

    root = tmp_path / "kernels"
    root.mkdir(mode=0o755)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f"tda_kernels_x.tmp-{dead.pid}"
    stale.mkdir()
    (stale / "x.o").write_bytes(b"0" * 1000)
    live = root / f"tda_kernels_x.tmp-{os.getpid()}"
    live.mkdir()
    kernel_cache.prepare_root(root)
    assert (root.stat().st_mode & 0o777) == 0o700
    assert not stale.exists() and live.exists()
    assert "removed" in capsys.readouterr().err


_PROBE = textwrap.dedent("""
    from tda.engine import kernels as K
    print("BACKEND", K.backend(), flush=True)
""")


def _cpp_available() -> bool:
    from tda.engine import kernels

    return kernels.backend() == "cpp"


def _env(cache: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TDA_CACHE_DIR": str(cache), "TDA_KERNELS_BACKEND": "auto"}


@pytest.mark.slow
@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
def test_truncated_kernel_library_is_rebuilt_not_a_bus_error(tmp_path):
    """End to end: a truncated ``.so`` used to give "Bus error" on every run. One compile."""
    from tda.engine import kernels

    good = Path(kernels.backend_info()["library"])
    lib_dir = tmp_path / "kernels" / good.parent.name
    lib_dir.mkdir(parents=True)
    lib = lib_dir / good.name
    lib.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (lib_dir / (good.name + ".sha256")).write_text(integrity.file_hash(good) + "\n")
    r = subprocess.run([sys.executable, "-c", _PROBE], env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "BACKEND cpp" in r.stdout
    assert "unusable" in r.stderr and "rebuilding" in r.stderr
    assert integrity.check_sidecar(lib) is None  # rebuilt and recorded


def _procs_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if text in ln and " Z" not in ln and "ps -eo" not in ln]


@pytest.mark.slow
@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_kernel_build_leaves_no_compiler_and_is_cleaned_next_time(tmp_path, sig):
    p = subprocess.Popen([sys.executable, "-c", _PROBE], env=_env(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    root = tmp_path / "kernels"
    t0 = time.time()
    while time.time() - t0 < 120 and not _procs_mentioning(str(root)):
        time.sleep(0.2)
    assert _procs_mentioning(str(root)), "the build never started"
    time.sleep(2)  # the compiler is running now
    p.send_signal(sig)
    p.wait()
    t0 = time.time()
    while time.time() - t0 < 20 and _procs_mentioning(str(root)):
        time.sleep(0.2)
    assert not _procs_mentioning(str(root)), "an orphaned compiler survived its parent"
    if sig == signal.SIGINT:  # interrupted: its own cleanup ran
        assert not list(root.glob("*.tmp-*"))
        return
    assert list(root.glob("*.tmp-*"))  # what the killed build left...
    r = subprocess.run([sys.executable, "-c", _PROBE], env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "BACKEND cpp" in r.stdout, r.stderr
    assert "left by a kernel build that was killed" in r.stderr  # ...is removed, with a line
    assert not list(root.glob("*.tmp-*"))


# ------------------------------------------------------------------------- the converted model
_FAKE_FILES = {"model.safetensors": 1 << 16, "config.json": 300, "tokenizer.json": 5000}


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """The embedded cache in a temporary TDA_CACHE_DIR, with a fake, fast conversion."""
    from tda.models import embedded

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def convert(dest, progress):
        calls.append(dest)
        for name, n in _FAKE_FILES.items():
            (dest / name).write_bytes(os.urandom(n))
        files = {p.name: p.stat().st_size for p in dest.iterdir() if p.is_file()}
        from tda.models import embedded_verify

        embedded_verify.record(dest, {"format": embedded.CACHE_FORMAT, "source": "fake", "files": files})

    monkeypatch.setattr(embedded, "_convert", convert)
    return embedded, calls


@pytest.mark.parametrize("name", [*_FAKE_FILES, "tda-cache.json"])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_converted_model_is_rebuilt_with_one_line(fake_conversion, name, how):
    embedded, calls = fake_conversion
    lines = []
    path = embedded.ensure_embedded_cache(lines.append)
    assert len(calls) == 1 and embedded.cache_is_valid(path)
    assert embedded.ensure_embedded_cache(lines.append) == path and len(calls) == 1  # intact: reused
    damage(path / name, how)
    assert not embedded.cache_is_valid(path)
    lines.clear()
    embedded.ensure_embedded_cache(lines.append)
    assert len(calls) == 2 and embedded.cache_is_valid(path)
    said = [ln for ln in lines if "damaged" in ln]
    assert len(said) == 1 and "rebuilding" in said[0], lines
    if name != "tda-cache.json":
        assert name in said[0]  # names the damaged file


def test_old_manifest_gets_hashes_once(fake_conversion):
    """A cache converted by an older version (sizes only) is hashed once, not reconverted."""
    embedded, calls = fake_conversion
    path = embedded.ensure_embedded_cache(lambda m: None)
    m = json.loads((path / "tda-cache.json").read_text())
    del m["hashes"]
    (path / "tda-cache.json").write_text(json.dumps(m))
    lines = []
    embedded.ensure_embedded_cache(lines.append)
    assert len(calls) == 1 and any("recording content hashes" in ln for ln in lines)
    assert "hashes" in json.loads((path / "tda-cache.json").read_text())


def test_leftovers_of_a_killed_conversion_are_removed(fake_conversion, tmp_path, capsys):
    import tempfile

    embedded, calls = fake_conversion
    root = tmp_path / "cache"
    root.mkdir(parents=True, exist_ok=True)
    hidden = root / ".gemma-3-270m.abc123"
    hidden.mkdir()
    (hidden / "model.safetensors").write_bytes(b"0" * 2000)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sys_tmp = Path(tempfile.gettempdir()) / f"tda-gguf-{dead.pid}-xyz"
    sys_tmp.mkdir(exist_ok=True)
    lines = []
    embedded.ensure_embedded_cache(lines.append)
    assert not hidden.exists() and not sys_tmp.exists()
    freed = [ln for ln in lines + capsys.readouterr().err.splitlines() if "removed" in ln]
    assert len(freed) == 2, (lines, freed)


def test_nonfinite_weights_are_found():
    import torch

    from tda.models import embedded_verify

    m = torch.nn.Linear(3, 2)
    assert embedded_verify.nonfinite_parameters(m) == []
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    assert embedded_verify.nonfinite_parameters(m) == ["weight"]


# ------------------------------------------------------------------------- calibrations
def _cal_dict(**over):
    d = {"model_id": "tiny-llama", "d_ff": 64, "n_layers": 2, "target": 0.2, "data_hash": "x",
         "n_tokens": 10, "thresholds": [0.1] * 2, "densities": [0.5] * 2}
    d.update(over)
    return d


@pytest.mark.parametrize("over,words", [
    ({"thresholds": [0.1]}, "1 values instead of 2"),
    ({"thresholds": ["0.1", "0.2"]}, "not a number"),
    ({"thresholds": [float("nan"), 0.1]}, "nan"),
    ({"thresholds": [1e30, 0.1]}, "outside"),
    ({"densities": [0.5, 7.0]}, "outside"),
    ({"n_layers": "2"}, "n_layers"),
])
def test_threshold_file_that_cannot_be_right_is_refused_naming_it(tmp_path, run_cli, over, words):
    f = tmp_path / "cal.json"
    f.write_text(json.dumps(_cal_dict(**over)))
    code, _, err = run_cli("recall", "-m", "tiny-llama", "--prompt", "hello there", "--thresholds", f,
                           "--out", tmp_path / "r.json")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0] and words in lines[0], err


def test_calibration_with_nan_is_never_written(tmp_path):
    from tda.common.errors import BadInput
    from tda.masks.calibrate import Calibration

    cal = Calibration(**_cal_dict(thresholds=[float("nan"), 1.0]))
    with pytest.raises(BadInput, match="cannot be right"):
        cal.save(tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_cached_calibration_is_recomputed_with_one_line(tmp_path, monkeypatch, tiny_llama, how, capsys):
    from tda.masks import calibrate as C

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    texts = ["one two three four five six", "seven eight nine ten"]
    calls = []
    real = C.calibrate
    monkeypatch.setattr(C, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = C.load_or_calibrate(tiny_llama, texts)
    C.load_or_calibrate(tiny_llama, texts)
    assert len(calls) == 1
    path = C.cache_path(tiny_llama.model_id, C.data_hash(texts), 0.2)
    if how == "garbled":  # same size, still valid JSON: only the content hash can tell
        text = path.read_text()
        i = text.index('"thresholds": [') + len('"thresholds": [') + 3
        digit = text[i] if text[i].isdigit() else None
        assert digit is not None
        path.write_text(text[:i] + str((int(digit) + 5) % 10) + text[i + 1:])
    else:
        damage(path, how)
    capsys.readouterr()
    again = C.load_or_calibrate(tiny_llama, texts)
    lines = capsys.readouterr().err.splitlines()
    assert len(calls) == 2 and again.thresholds == first.thresholds
    assert len([ln for ln in lines if "damaged" in ln and str(path) in ln]) == 1, lines


# ------------------------------------------------------------------------- neuron statistics
NEURON_TEXTS = ["The cat sat on the mat.", "A dog ran in the park.", "Birds fly over the sea."]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_neuron_statistics_are_recomputed_with_one_line(tmp_path, monkeypatch, tiny_llama, how, capsys):
    import torch

    from tda.activations import neuron_corpus as nc

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    nc._MEMO.clear()
    first = nc.load_or_compute_corpus_stats(tiny_llama, NEURON_TEXTS)
    path = nc.cache_path(tiny_llama.model_id, first.data_hash)
    damage(path, how)
    nc._MEMO.clear()
    capsys.readouterr()
    again = nc.load_or_compute_corpus_stats(tiny_llama, NEURON_TEXTS)
    err = capsys.readouterr().err.splitlines()
    assert torch.equal(again.quantiles, first.quantiles)
    assert len([ln for ln in err if "damaged" in ln and str(path) in ln]) == 1, err
    nc._MEMO.clear()


def test_neuron_statistics_with_nan_are_refused_at_write_and_read(tmp_path, tiny_llama, monkeypatch):
    import dataclasses

    from tda.activations import neuron_corpus as nc
    from tda.common.errors import BadInput

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    nc._MEMO.clear()
    good = nc.load_or_compute_corpus_stats(tiny_llama, NEURON_TEXTS)
    q = good.quantiles.clone()
    q[0, 0, 0] = float("nan")
    bad = dataclasses.replace(good, quantiles=q)
    with pytest.raises(BadInput, match="cannot be right.*NaN"):
        bad.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    # a file written by something else: refused on read, naming it
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = nc.cache_path(tiny_llama.model_id, good.data_hash)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    t["quantiles"] = q
    save_file(t, str(tmp_path / "x.safetensors"), metadata=meta)
    with pytest.raises(BadInput, match="x.safetensors.*NaN"):
        nc.CorpusStats.load(tmp_path / "x.safetensors")
    nc._MEMO.clear()


# ------------------------------------------------------------------------- predictors
def test_predictor_lr_inf_is_refused_before_loading(run_cli):
    code, _, err = run_cli("train-predictor", "-m", "tiny-llama", "--lr", "inf")
    assert code == 2 and err.count("\n") == 1 and "lr" in err


def test_predictor_that_cannot_be_right_is_never_saved_nor_read(tmp_path):
    import torch

    from tda.common.errors import BadInput
    from tda.masks.predictor_train import NeuronPredictor

    def pred(A00=0.0, recall=0.9):
        A = [torch.zeros(4, 2)]
        A[0][0, 0] = A00
        return NeuronPredictor("m", "h", {"label_density": 0.5}, A, [torch.zeros(2, 8)], [recall], 10, 5)

    for bad, words in ((pred(A00=float("nan")), "NaN"), (pred(recall=0.2), "below chance")):
        with pytest.raises(BadInput, match=words):
            bad.save(tmp_path / "p.pt")
        assert not (tmp_path / "p.pt").exists()
        torch.save({"info": json.dumps({"model_id": "m", "data_hash": "h", "settings": bad.settings,
                                        "recall": bad.recall, "n_train": 10, "n_heldout": 5, "meta": {}}),
                    "A": bad.A, "B": bad.B}, tmp_path / "q.pt")
        with pytest.raises(BadInput, match=f"q.pt.*{words}"):
            NeuronPredictor.load(tmp_path / "q.pt")
    pred().save(tmp_path / "ok.pt")
    assert NeuronPredictor.load(tmp_path / "ok.pt").recall == [0.9]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_cached_predictor_is_retrained_with_one_line(tmp_path, monkeypatch, tiny_llama, how, capsys):
    import torch

    from tda.masks import predictor_train as P

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    P._MEMO.clear()
    settings = P.PredictorSettings(rank=4, epochs=1)
    first, cached = P.load_or_train(tiny_llama, NEURON_TEXTS * 4, settings)
    assert not cached
    path = P.cache_path(tiny_llama.model_id, first.data_hash, settings)
    damage(path, how)
    P._MEMO.clear()
    capsys.readouterr()
    again, cached = P.load_or_train(tiny_llama, NEURON_TEXTS * 4, settings)
    err = capsys.readouterr().err.splitlines()
    assert not cached and torch.equal(again.A[0], first.A[0])
    assert len([ln for ln in err if "damaged" in ln and str(path) in ln]) == 1, err
    P._MEMO.clear()


# ------------------------------- input thresholds, R-Sparse, SCAP and CHESS calibration caches
def _rsparse(lm, texts):
    from tda.engine.methods.teal import block_linears
    from tda.masks import lowrank
    from tda.masks.input_thresholds import module_names

    mods = block_linears(lm)
    names = module_names(lm.model)
    return lowrank.load_or_calibrate_rsparse(lm, 0.5, mods, [names[id(m)] for m in mods], texts)


def _scap(lm, texts):
    from tda.masks.scap_calibration import load_or_calibrate_scap

    return load_or_calibrate_scap(lm, 0.5, texts)


def _chess(lm, texts):
    from tda.masks.channel_thresholds import load_or_calibrate_channels

    return load_or_calibrate_channels(lm, texts)


def _inputs(lm, texts):
    from tda.masks.input_thresholds import load_or_calibrate_inputs

    return load_or_calibrate_inputs(lm, texts)


_CAL_KINDS = {  # kind: (load or compute, module computing it, its function, cache file suffix)
    "inputs": (_inputs, "tda.masks.input_thresholds", "calibrate_inputs", "-inputs.json"),
    "rsparse": (_rsparse, "tda.masks.lowrank", "calibrate_rsparse", "-rsparse-d0.5.json"),
    "scap": (_scap, "tda.masks.scap_calibration", "calibrate_scap", "-scap0.5000.json"),
    "chess": (_chess, "tda.masks.channel_thresholds", "calibrate_channels", "-chess.json"),
}


def _clear_memos():
    from tda.masks import channel_thresholds, input_thresholds, lowrank

    lowrank._MEMO.clear()
    channel_thresholds._MEMO.clear()
    input_thresholds._MEMO.clear()


def _counting(monkeypatch, kind):
    import importlib

    _, mod, fn, _ = _CAL_KINDS[kind]
    m = importlib.import_module(mod)
    calls = []
    real = getattr(m, fn)
    monkeypatch.setattr(m, fn, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _cal_file(tmp_path, kind) -> Path:
    (path,) = [p for p in (tmp_path / "calibration").glob("*.json") if p.name.endswith(_CAL_KINDS[kind][3])]
    return path


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", _CAL_KINDS)
def test_damaged_cached_method_calibration_is_recomputed_with_one_line(tmp_path, monkeypatch, tiny_llama,
                                                                      kind, how, capsys):
    from dataclasses import asdict

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    _clear_memos()
    calls = _counting(monkeypatch, kind)
    load = _CAL_KINDS[kind][0]
    first = load(tiny_llama, NEURON_TEXTS)
    path = _cal_file(tmp_path, kind)
    assert integrity.check_sidecar(path) is None  # its hash was recorded
    _clear_memos()
    load(tiny_llama, NEURON_TEXTS)
    assert len(calls) == 1  # intact: read back
    if how == "garbled":  # same size, still valid JSON: only the content hash can tell
        text = path.read_text()
        i = next(j for j in range(len(text) // 2, len(text)) if text[j] in "123456789")
        path.write_text(text[:i] + str(int(text[i]) % 9 + 1) + text[i + 1:])
        json.loads(path.read_text())
    else:
        damage(path, how)
    _clear_memos()
    capsys.readouterr()
    again = load(tiny_llama, NEURON_TEXTS)
    err = capsys.readouterr().err.splitlines()
    assert len(calls) == 2 and asdict(again) == asdict(first)
    assert len([ln for ln in err if "damaged" in ln and str(path) in ln]) == 1, err
    assert integrity.check_sidecar(path) is None
    _clear_memos()


def _poison(cal, kind):
    """``cal`` with one NaN where a value is read."""
    import dataclasses

    if kind == "rsparse":
        site = next(iter(cal.sites))
        return dataclasses.replace(cal, sites={**cal.sites, site: {**cal.sites[site], "tau": float("nan")}})
    if kind == "inputs":
        site = next(iter(cal.quantiles))
        return dataclasses.replace(cal, quantiles={**cal.quantiles, site: [float("nan")] * len(cal.quantiles[site])})
    if kind == "scap":
        site = next(iter(cal.thresholds))
        return dataclasses.replace(cal, thresholds={**cal.thresholds, site: float("inf")})
    site = next(iter(cal.scales))
    return dataclasses.replace(cal, scales={**cal.scales, site: [float("nan")] + cal.scales[site][1:]})


@pytest.mark.parametrize("kind", _CAL_KINDS)
def test_method_calibration_with_nan_is_refused_at_write_and_read(tmp_path, monkeypatch, tiny_llama, kind,
                                                                  capsys):
    import importlib

    from tda.common.errors import BadInput

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    _clear_memos()
    load, mod, fn, _ = _CAL_KINDS[kind]
    good = load(tiny_llama, NEURON_TEXTS)
    path = _cal_file(tmp_path, kind)
    bad = _poison(good, kind)
    # written with a NaN (and a matching hash, as by another tool): dropped with one line on read
    path.write_text(bad.to_json())
    integrity.write_sidecar(path)
    _clear_memos()
    capsys.readouterr()
    assert load(tiny_llama, NEURON_TEXTS) == good
    err = capsys.readouterr().err.splitlines()
    said = [ln for ln in err if str(path) in ln]
    assert len(said) == 1 and "cannot be right" in said[0], err
    # computed with a NaN: refused in one line naming the file, nothing written
    path.unlink()
    integrity.sidecar(path).unlink()
    _clear_memos()
    monkeypatch.setattr(importlib.import_module(mod), fn, lambda *a, **k: bad)
    with pytest.raises(BadInput, match=f"{path.name}.*cannot be right"):
        load(tiny_llama, NEURON_TEXTS)
    assert not path.exists()
    _clear_memos()


# ------------------------------------------------------- the embedded GGUF and GGUF indexes
@pytest.fixture
def fake_gguf_setup(tmp_path, monkeypatch):
    """The embedded GGUF folder in a temporary TDA_CACHE_DIR, assembled by a fake, fast build."""
    from tda.models import embedded_gguf, embedded_verify

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def build(dest, progress):
        calls.append(dest)
        embedded_gguf.gguf_file(dest).write_bytes(os.urandom(1 << 16))
        (dest / "tokenizer.json").write_bytes(os.urandom(5000))
        files = {p.name: p.stat().st_size for p in dest.iterdir() if p.is_file()}
        embedded_verify.record(dest, {"format": embedded_gguf.FORMAT, "source": "fake", "files": files})

    monkeypatch.setattr(embedded_gguf, "_build", build)
    return embedded_gguf, calls


@pytest.mark.parametrize("name", ["gguf", "tokenizer.json", "tda-cache.json"])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_embedded_gguf_is_rebuilt_with_one_line(fake_gguf_setup, name, how):
    eg, calls = fake_gguf_setup
    lines = []
    path = eg.ensure_gguf_cache(lines.append)
    assert eg.ensure_gguf_cache(lines.append) == path and len(calls) == 1  # intact: reused
    target = eg.gguf_file(path) if name == "gguf" else path / name
    damage(target, how)  # same-size damage too: the manifest used to hold sizes only
    assert not eg.cache_is_valid(path)
    lines.clear()
    eg.ensure_gguf_cache(lines.append)
    assert len(calls) == 2 and eg.cache_is_valid(path)
    said = [ln for ln in lines if "damaged" in ln]
    assert len(said) == 1 and "rebuilding" in said[0] and str(path) in said[0], lines


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A GGUF index in a temporary TDA_CACHE_DIR, built by a fake, fast indexer."""
    from tda.models import gguf_index

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(os.urandom(4096))
    calls = []

    def build(path, dest):
        calls.append(dest)
        (dest / "index.json").write_text(json.dumps({"format": 1, "arch": "llama", "config": {"a": 1},
                                                     "tensors": [{"name": "t", "offset": 0, "nbytes": 8}] * 40}))
        (dest / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
        (dest / "tokenizer.json").write_bytes(os.urandom(3000))

    monkeypatch.setattr(gguf_index, "_build", build)
    return gguf_index, gguf, calls


@pytest.mark.parametrize("name", ["index.json", "config.json", "tokenizer.json", "tda-hashes.json"])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_gguf_index_is_rebuilt_with_one_line(fake_index, name, how, capsys):
    gi, gguf, calls = fake_index
    info, folder = gi.index(gguf)
    assert gi.index(gguf) == (info, folder) and len(calls) == 1  # intact: reused
    damage(folder / name, how)
    capsys.readouterr()
    assert gi.index(gguf) == (info, folder)
    err = capsys.readouterr().err.splitlines()
    assert len(calls) == 2
    said = [ln for ln in err if "damaged" in ln]
    assert len(said) == 1 and str(folder) in said[0], err


def test_gguf_index_of_an_older_version_gets_hashes_once(fake_index):
    gi, gguf, calls = fake_index
    _, folder = gi.index(gguf)
    (folder / gi.HASHES).unlink()
    gi.index(gguf)
    assert len(calls) == 1 and (folder / gi.HASHES).is_file()


def test_a_conversion_hands_its_model_to_the_loader_once(fake_conversion, monkeypatch):
    """The loader asks for the model a conversion just made (``handoff``) and takes it once, while
    the cache is saved by a thread (whole when it ends); other callers leave nothing held."""
    import threading

    embedded, calls = fake_conversion
    made, saving = [], threading.Event()
    convert = embedded._convert

    def convert_handing_off(dest, progress, on_model=None):
        made.append(object())
        if on_model is not None:
            on_model(made[-1], dest)
            assert saving.wait(10)  # the caller has the model before the save below
        return convert(dest, progress)

    monkeypatch.setattr(embedded, "_convert", convert_handing_off)
    path = embedded.ensure_embedded_cache(lambda _m: None)  # no handoff asked: saved, nothing held
    assert embedded.cache_is_valid(path) and embedded.take_converted(path) is None
    embedded.invalidate_cache()
    path = embedded.ensure_embedded_cache(lambda _m: None, handoff=True)
    got = embedded.take_converted(path)
    assert got is not None and got[0] is made[-1] and not path.exists()  # handed over before the save
    saving.set()
    embedded.wait_saved()
    assert embedded.cache_is_valid(path) and len(made) == 2
    assert embedded.take_converted(path) is None  # once
    embedded.ensure_embedded_cache(lambda _m: None, handoff=True)  # valid cache: no conversion, nothing held
    assert len(made) == 2 and embedded.take_converted(path) is None


def test_a_handed_off_conversion_whose_save_fails_says_so_in_one_line(fake_conversion, monkeypatch):
    embedded, calls = fake_conversion

    def convert_failing_save(dest, progress, on_model=None):
        on_model(object(), dest)
        raise OSError("No space left on device")

    monkeypatch.setattr(embedded, "_convert", convert_failing_save)
    lines = []
    path = embedded.ensure_embedded_cache(lines.append, handoff=True)
    assert embedded.take_converted(path) is not None
    embedded.wait_saved()
    assert not path.exists() and not list(path.parent.glob(f".{path.name}.*"))
    said = [ln for ln in lines if "could not save" in ln]
    assert len(said) == 1 and "No space left" in said[0] and "\n" not in said[0]


def test_ctrl_c_during_a_handed_off_conversion_saves_nothing(tmp_path):
    """SIGINT while the loader waits for a conversion's weights: the worker stops before saving (no
    cache folder, no temporary folder) and the process ends without waiting for a save."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import os, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it (see test_signals)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        from tda.models import embedded
        def slow_convert(dest, progress, on_model=None):
            (dest / "partial").write_text("x")
            print("converting", flush=True)
            time.sleep(3)
            on_model(object(), dest)
            time.sleep(30)  # a save that must not happen
        embedded._convert = slow_convert
        try:
            embedded.ensure_embedded_cache(lambda m: None, handoff=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    ''')
    env = {**os.environ, "TDA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "converting"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=25)  # a hang, not a timing: the save it would wait for sleeps 30 s
    assert p.returncode == 130 and "interrupted" in out
    root = tmp_path / "cache"
    assert not (root / "gemma-3-270m").exists() and not list(root.glob(".gemma-3-270m.*"))
