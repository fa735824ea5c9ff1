"""GRIFFIN, reference-faithful (issue #11): ``--griffin-reference`` reproduces GRIFFIN's own code.

The reference here is written by hand after hdong920/GRIFFIN (``src/griffin/gemma.py``): at prefill
(``x.shape[1] > 1``) each MLP computes ``z = act(gate(x))·up(x)`` densely, the statistic
``‖z / ‖z‖_row‖`` over *all* prompt positions (BOS included: its Gemma evaluation tokenizes with
special tokens), ``k = int(d_ff · density)`` and ``torch.topk``; decode steps use the kept rows of
gate/up and columns of down only.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tda.masks.build import griffin_mask, k_for_density

PROMPT = "Almost one million people visited the city during the festival"
DENSITY = 0.35  # d_ff 128: 44.8 -> the reference keeps 44, the project's default 45


class ReferenceGriffinMLP(nn.Module):
    """GRIFFIN's GemmaMLP in 'gen' mode with 'topk' selection, reduced to what a test needs."""

    def __init__(self, mlp: nn.Module, k_factor: float):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        self.k_factor = k_factor
        self.kept = None

    def forward(self, x):
        if x.shape[1] > 1:
            int_states = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
            k = int(int_states.shape[-1] * self.k_factor)
            neuron_stat = (int_states / int_states.norm(dim=-1).unsqueeze(-1)).norm(dim=1)  # B, D
            _, topk_indices = torch.topk(neuron_stat, k, dim=-1)
            self.kept = topk_indices[0]
            self.gate_reduced = self.gate_proj.weight.data[self.kept]
            self.up_reduced = self.up_proj.weight.data[self.kept]
            self.down_reduced = self.down_proj.weight.data[:, self.kept]
            return self.down_proj(int_states)
        return nn.functional.linear(
            self.act_fn(nn.functional.linear(x, self.gate_reduced)) * nn.functional.linear(x, self.up_reduced),
            self.down_reduced)


@pytest.fixture(scope="module")
def reference():
    """A private tiny-gemma3 whose MLPs are the reference's, after a greedy generation of 8 tokens."""
    from tda.models.load import load_model

    lm = load_model("tiny-gemma3")  # a fresh copy: the shared fixtures stay untouched
    layers = lm.model.model.layers
    for layer in layers:
        layer.mlp = ReferenceGriffinMLP(layer.mlp, DENSITY)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids  # with BOS, as GRIFFIN's Gemma path
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    kept = [set(layer.mlp.kept.tolist()) for layer in layers]
    return {"tokens": out[0, ids.shape[1]:].tolist(), "kept": kept}


def test_k_rounding():
    assert k_for_density(128, DENSITY) == 45 and k_for_density(128, DENSITY, reference=True) == 44
    assert k_for_density(2048, 0.5) == k_for_density(2048, 0.5, reference=True) == 1024
    assert k_for_density(100, 0.005, reference=True) == 1  # never an empty layer


def test_mask_from_a_capture_with_bos_matches_the_reference(load_tiny, reference):
    from tda.activations.capture import capture

    lm = load_tiny("tiny-gemma3")
    acts = capture(lm, PROMPT, include_bos=True).acts
    mask = griffin_mask(acts, DENSITY, reference=True)
    assert [set(mask.indices(L).tolist()) for L in range(mask.n_layers)] == reference["kept"]
    assert mask.params["reference"] is True
    default = griffin_mask(capture(lm, PROMPT).acts, DENSITY)  # the project's documented default differs
    assert int(default.keep[0].sum()) == 45 and int(mask.keep[0].sum()) == 44


def test_engine_masks_match_the_reference(load_tiny, reference):
    from tda.engine.generate import SparseSession

    lm = load_tiny("tiny-gemma3")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    masks = {}
    for ref_mode in (True, False):
        s = SparseSession(lm, "griffin", density=DENSITY, fast=False, griffin_reference=ref_mode)
        with s.active(), torch.inference_mode():
            s.begin(ids)
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            s.finish_prefill()
        masks[ref_mode] = [set(s.masks[0].indices(L).tolist()) for L in range(lm.ffn.n_layers)]
    assert masks[True] == reference["kept"]
    assert masks[False] != reference["kept"]


def test_generation_matches_the_reference(load_tiny, reference):
    from tda.engine.generate import generate

    lm = load_tiny("tiny-gemma3")
    res = generate(lm, PROMPT, "griffin", density=DENSITY, max_new_tokens=8, min_new_tokens=8, fast=False,
                   griffin_reference=True)
    assert res.token_ids[0] == reference["tokens"]
    assert res.density == pytest.approx(44 / 128)


def test_griffin_reference_cli(run_cli, tmp_path):
    import json

    path = tmp_path / "g.json"
    code, _, err = run_cli("generate", "-m", "tiny-gemma3", "-p", PROMPT, "--method", "griffin", "--density",
                           str(DENSITY), "--griffin-reference", "-n", "3", "--json", path)
    assert code == 0, err
    assert json.loads(path.read_text())["density"] == pytest.approx(44 / 128)
    code, _, err = run_cli("generate", "-m", "tiny-gemma3", "-p", PROMPT, "--method", "tda", "--griffin-reference")
    assert code == 2 and "--griffin-reference applies to --method griffin only" in err
    code, out, _ = run_cli("generate", "--help")
    assert "--griffin-reference" in out and "int(d_ff * density)" in " ".join(out.split())
