"""Models larger than one device: accelerate's device map, with layers offloaded (CPU-only test).

A tiny model is forced to offload part of its layers to disk (``max_memory`` below its size):
those layers' weights are ``meta`` tensors that accelerate's hooks load at forward time. The
capture, masks, sliced/TT sparse generation and their tokens must equal the one-device run.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tda.common.errors import BadInput
from tda.models import placement
from tda.models.load import load_model

PROMPT = "Almost one million people visited the city during the festival"


@pytest.fixture
def single():
    """A fresh one-device tiny-llama: the shared fixture's layouts change once token-wise methods
    ran on it (same values, another summation order), and these comparisons are bitwise."""
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def offloaded():
    """tiny-llama with layer 0 in RAM and layers 1-2 (and the lm_head) offloaded to disk."""
    return load_model("tiny-llama", device_map="auto", max_memory="cpu=500KB")


def test_part_of_the_layers_is_offloaded(offloaded):
    dm = offloaded.model.hf_device_map
    assert dm["model.layers.0"] == "cpu" and dm["model.layers.2"] == "disk", dm
    ffn = offloaded.ffn
    assert [placement.is_offloaded(ffn.out_module(L)) for L in range(3)] == [False, True, True]
    assert ffn.out_module(2).weight.device.type == "meta"  # accelerate's hook holds the real weights
    assert offloaded.device == torch.device("cpu") and "disk" in offloaded.info()["device_map"]
    assert placement.has_offload(offloaded.model)


def test_weights_read_through_the_hooks_equal_the_model(single, offloaded):
    from tda.masks.build import model_down_norms, model_static_scores

    for L in range(3):
        assert torch.equal(offloaded.ffn.down_weight(L), single.ffn.down_weight(L))
        for a, b in zip(offloaded.ffn.in_weights(L), single.ffn.in_weights(L)):
            assert torch.equal(a, b)
    assert torch.equal(model_down_norms(offloaded), model_down_norms(single))
    assert torch.equal(model_static_scores(offloaded), model_static_scores(single))


@pytest.mark.parametrize("mode", ["sequence", "isolated"])
def test_capture_equals_the_single_device_run(single, offloaded, mode):
    from tda.activations.capture import capture, capture_batch

    assert torch.equal(capture(offloaded, PROMPT, mode=mode).acts, capture(single, PROMPT, mode=mode).acts)
    for a, b in zip(capture_batch(offloaded, [PROMPT, "a short one"]), capture_batch(single, [PROMPT, "a short one"])):
        assert torch.equal(a.acts, b.acts)


def test_decode_capture_equals_the_single_device_run(single, offloaded):
    from tda.activations.decode import generate_with_capture

    a, b = generate_with_capture(offloaded, PROMPT, 6), generate_with_capture(single, PROMPT, 6)
    assert a.token_ids == b.token_ids and torch.equal(a.decode_acts, b.decode_acts)


@pytest.mark.parametrize("method,density", [("dense", None), ("griffin", 0.5), ("tda", 0.5), ("tt", 0.5),
                                            ("static", 0.3), ("random", 0.5)])
def test_sparse_generation_tokens_equal_the_single_device_run(single, offloaded, method, density):
    from tda.engine.generate import generate

    kw = dict(density=density, max_new_tokens=8, calibration_texts=[PROMPT, "the city had a festival"])
    got = generate(offloaded, [PROMPT, "the city"], method, batch_mode="rows", **kw)
    ref = generate(single, [PROMPT, "the city"], method, fast=False, batch_mode="rows", **kw)
    assert got.token_ids == ref.token_ids and got.density == pytest.approx(ref.density)
    assert got.params["fast"] is False  # the oneDNN path is off for an offloaded model


def test_conv1d_family_with_tied_weights_offloaded(load_tiny):
    from tda.activations.capture import capture
    from tda.engine.generate import generate

    ref = load_tiny("tiny-gpt2")
    off = load_model("tiny-gpt2", device_map="auto", max_memory="cpu=300KB")
    assert placement.is_offloaded(off.ffn.out_module(2))
    assert torch.equal(capture(off, PROMPT).acts, capture(ref, PROMPT).acts)
    for method in ("dense", "griffin"):
        a = generate(off, PROMPT, method, density=0.5, max_new_tokens=8, fast=False)
        b = generate(ref, PROMPT, method, density=0.5, max_new_tokens=8, fast=False)
        assert a.token_ids == b.token_ids


def test_device_map_file_and_control_keep_the_placement(tmp_path, single):
    from tda.activations.capture import capture
    from tda.models.load import random_weights_like

    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu",
                                "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                                "lm_head": "cpu"}))
    lm = load_model("tiny-llama", device_map=str(path))
    assert [placement.is_offloaded(lm.ffn.out_module(L)) for L in range(3)] == [True, False, True]
    assert torch.equal(capture(lm, PROMPT).acts, capture(single, PROMPT).acts)
    ctrl = random_weights_like(lm, 0)
    assert ctrl.device_map == lm.device_map and placement.has_offload(ctrl.model)


def test_cli_device_map_gives_the_same_output(run_cli, tmp_path):
    args = ["generate", "--model", "tiny-llama", "--prompt", PROMPT, "--method", "griffin", "--density", "0.5",
            "-n", "8", "--no-fast"]
    code, ref, err = run_cli(*args)
    assert code == 0, err
    code, got, err = run_cli(*args, "--device-map", "auto", "--max-memory", "cpu=500KB")
    assert code == 0, err
    assert got.splitlines()[0] == ref.splitlines()[0]  # the generated text
    code, out, err = run_cli("capture", "--help")
    assert "--device-map" in out and "--max-memory" in out


@pytest.mark.parametrize("args,match", [
    (["--device-map", "everywhere"], "unknown device map"),
    (["--device-map", "auto", "--max-memory", "cpu"], "max memory must look like"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "is not a size"),
    (["--device-map", "auto", "--max-memory", "gpu0=1GB"], "unknown device"),
    (["--max-memory", "cpu=1GB"], "needs a device map"),
    (["--device-map", "auto", "--max-memory", "cpu=10KB"], "no room for any layer"),
])
def test_cli_placement_arguments_are_checked(run_cli, tmp_path, args, match):
    code, _, err = run_cli("capture", "--model", "tiny-llama", "--prompt", "hi", "--out", tmp_path / "o.st", *args)
    assert code == 2 and match in err, err
    assert not (tmp_path / "o.st").exists()


def test_parsers():
    assert placement.parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert placement.parse_max_memory({"cpu": 1000}) == {"cpu": 1000}
    assert placement.parse_max_memory(None) is None and placement.check_device_map(None) is None
    assert placement.check_device_map("balanced") == "balanced"
    with pytest.raises(BadInput, match="not a readable JSON"):
        placement.check_device_map("missing.json")


def test_offload_folders_of_killed_runs_are_removed_on_the_next_start(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from tda.models.placement import offload_folder

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "offload" / f"p{dead.pid}-abc"
    left.mkdir(parents=True)
    (left / "w.dat").write_bytes(b"0" * 1000)
    mine = Path(offload_folder())
    assert not left.exists() and mine.is_dir() and mine.name.startswith(f"p{os.getpid()}-")
