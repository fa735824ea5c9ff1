"""Why one FFN neuron fires: its activations on a prompt, over the corpus, and what it writes.

For neuron ``i`` of layer ``L`` (``a_i = act(gate_i)·up_i``, the down projection's input,
TransformerLens ``blocks.{L}.mlp.hook_post``):

- (a) ``a_i`` on every prompt token (and ``act(gate_i)`` for gated FFNs);
- (b) its top- and bottom-activating corpus contexts (:mod:`tda.activations.neuron_corpus`);
- (c) its corpus distribution with each method's cut-off: CETT/TT ``|a| ≥ t_L/‖W_down[:, i]‖``,
  TEAL ``|a| ≥ τ`` (the down projection's input site), CATS ``|act(gate)| ≥ τ_L`` (another
  quantity: the gate activation, before the product with ``up``);
- (d) the tokens it promotes and suppresses: ``W_U (γ ⊙ W_down[:, i])`` with ``γ`` the final
  norm's scale (a direct-logit view that ignores the norm's division);
- (e) which masks keep it for the prompt: TDA, GRIFFIN, static (sequence-wise: kept or not),
  TT, TEAL, CATS (token-wise: the fraction of prompt tokens where it is active).

Pure functions of tensors first; :func:`neuron_profile` wires them to a loaded model and the
cached calibrations and returns one JSON-able dict (the CLI's ``--json`` and the app's numbers).
"""

from __future__ import annotations

import numpy as np
import torch

from tda.common.errors import BadInput

TOP_TOKENS = 10  # promoted / suppressed vocabulary tokens
TOP_CONTEXTS = 8  # corpus contexts shown per direction
WINDOW = 8  # context tokens either side of a corpus token
DENSITY = 0.5  # density of GRIFFIN, static, TEAL and CATS by default


# ----- checks and labels ---------------------------------------------------------------------------
def check_neuron(layer, neuron, n_layers: int, d_ff: int) -> tuple[int, int]:
    """``(layer, neuron)`` as ints; BadInput when either is not an integer or out of range."""
    for name, v, n in (("layer", layer, n_layers), ("neuron", neuron, d_ff)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise BadInput(f"{name} must be an integer, got {v!r}")
        if not 0 <= int(v) < n:
            where = "the model has layers" if name == "layer" else f"layer {layer} has neurons"
            raise BadInput(f"{name} {v} out of range: {where} 0..{n - 1}")
    return int(layer), int(neuron)


def token_text(tokenizer, ids) -> str:
    """How the workbench shows token text: decoded, newlines as ``⏎`` (one id or a span)."""
    ids = [int(ids)] if isinstance(ids, (int, np.integer)) else [int(i) for i in ids]
    return tokenizer.decode(ids).replace("\n", "⏎")


# ----- (c) distributions from quantiles ------------------------------------------------------------
def _levels(quantiles, levels) -> np.ndarray:
    return np.linspace(0.0, 1.0, len(quantiles)) if levels is None else np.asarray(levels, dtype=np.float64)


def cdf(quantiles, x: float, levels=None, *, strict: bool = False) -> float:
    """Fraction of values ``≤ x`` (``< x`` when ``strict``) from quantiles ``q[k]`` at the
    probabilities ``levels[k]`` (from 0 to 1; default equally spaced), linear between them; ties
    are point masses."""
    q = np.asarray(quantiles, dtype=np.float64)
    p = _levels(q, levels)
    r = int(np.searchsorted(q, x, side="left" if strict else "right"))
    if r == 0:
        return 0.0
    if r >= len(q):
        return 1.0
    lo, hi = q[r - 1], q[r]
    frac = 0.0 if hi <= lo else (x - lo) / (hi - lo)
    return float(min(1.0, max(0.0, p[r - 1] + frac * (p[r] - p[r - 1]))))


def fraction_beyond(quantiles, cut: float, levels=None) -> float:
    """Fraction of values with ``|v| ≥ cut`` (``cut ≥ 0``) from quantiles (see :func:`cdf`)."""
    if cut <= 0:
        return 1.0
    return float(min(1.0, 1.0 - cdf(quantiles, cut, levels, strict=True) + cdf(quantiles, -cut, levels)))


def quantile_histogram(quantiles, n_values: int, bins: int = 60, levels=None) -> tuple[list[float], list[float]]:
    """``(edges[bins + 1], counts[bins])``: the histogram the quantiles describe, for ``n_values``
    values, on equal bins from the smallest to the largest value (counts sum to ``n_values``)."""
    q = np.asarray(quantiles, dtype=np.float64)
    lo, hi = float(q[0]), float(q[-1])
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    F = np.array([cdf(q, e, levels) for e in edges])
    counts = np.diff(F)
    counts[0] += F[0]  # the values at the minimum
    counts[-1] += 1.0 - F[-1]
    return [float(e) for e in edges], [float(c * n_values) for c in counts]


# ----- (d) vocabulary ------------------------------------------------------------------------------
def vocab_logits(direction: torch.Tensor, w_u: torch.Tensor, scale: torch.Tensor, *, centre: bool = False) -> torch.Tensor:
    """``logits[vocab] = W_U (γ ⊙ d)`` for ``direction[d_model]`` (``W_down[:, i]``),
    ``w_u[vocab, d_model]`` and the final norm's scale ``γ[d_model]``; ``centre`` subtracts the
    mean of ``d`` first (LayerNorm centres its input)."""
    d = direction.float().cpu()
    if centre:
        d = d - d.mean()
    return w_u.float().cpu() @ (scale.float().cpu() * d)


def top_tokens(logits: torch.Tensor, tokenizer, k: int = TOP_TOKENS) -> dict:
    """The ``k`` largest (promoted) and smallest (suppressed) logits among the tokenizer's ids."""
    n = min(logits.numel(), len(tokenizer))
    k = min(k, n)
    out = {}
    for name, largest in (("promoted", True), ("suppressed", False)):
        top = logits[:n].topk(k, largest=largest)
        out[name] = [{"id": int(i), "token": token_text(tokenizer, int(i)), "logit": float(v)}
                     for v, i in zip(top.values, top.indices)]
    return out


def vocab_effect(lm, layer: int, neuron: int, k: int = TOP_TOKENS) -> dict:
    """:func:`top_tokens` of :func:`vocab_logits` for a loaded model (the adapter gives ``γ``)."""
    from tda.models import placement

    head = lm.model.get_output_embeddings()
    if head is None:
        raise BadInput("this model has no output embedding (unembedding) to project onto")
    scale, centre = lm.ffn.final_norm_scale()
    logits = vocab_logits(lm.ffn.down_weight(layer)[:, neuron], placement.layer_weight(head), scale, centre=centre)
    return top_tokens(logits, lm.tokenizer, k)


# ----- (e) masks ---------------------------------------------------------------------------------
def mask_membership(acts: torch.Tensor, neuron: int, *, down_norms: torch.Tensor, static_scores: torch.Tensor,
                    t_layer: float, density: float, teal_cut: float, gate: torch.Tensor | None = None,
                    cats_cut: float | None = None) -> dict:
    """Which masks keep ``neuron`` for one layer's prompt ``acts[token, neuron]``.

    Sequence-wise (``keeps``, plus the neuron's score and rank in the layer): TDA (RMS output
    norm ``≥ t_layer``), GRIFFIN and static (top-k at ``density``). Token-wise (``fraction`` of
    prompt tokens where it is active): TT (``|a|·‖W_down[:, i]‖ ≥ t_layer``), TEAL
    (``|a| ≥ teal_cut``), CATS (``|act(gate)| ≥ cats_cut``; None without a gate).
    """
    from tda.masks.build import (
        griffin_mask,
        griffin_scores,
        k_for_density,
        static_mask,
        tda_mask,
        tda_scores,
        tt_masks,
    )

    a3 = acts.float()[None]  # [1 layer, token, neuron]
    norms = down_norms.float()[None]
    i = neuron

    def rank(scores: torch.Tensor) -> int:
        return int((scores > scores[i]).sum()) + 1

    tda_s = tda_scores(a3, norms)[0]
    grif_s = griffin_scores(a3)[0]
    k = k_for_density(acts.shape[1], density)
    out = {
        "tda": {"keeps": bool(tda_mask(a3, norms, [t_layer]).keep[0, i]), "score": float(tda_s[i]),
                "threshold": float(t_layer), "rank": rank(tda_s)},
        "griffin": {"keeps": bool(griffin_mask(a3, density).keep[0, i]), "score": float(grif_s[i]),
                    "rank": rank(grif_s), "k": k},
        "static": {"keeps": bool(static_mask(static_scores.float()[None], density).keep[0, i]),
                   "score": float(static_scores[i]), "rank": rank(static_scores.float()), "k": k},
        "tt": {"fraction": float(tt_masks(a3, norms, [t_layer]).keep[0, :, i].float().mean())},
        "teal": {"fraction": float((acts[:, i].abs() >= teal_cut).float().mean())},
        "cats": None,
    }
    if gate is not None and cats_cut is not None:
        out["cats"] = {"fraction": float((gate[:, i].abs() >= cats_cut).float().mean())}
    return out


# ----- (a) the prompt ----------------------------------------------------------------------------
def prompt_trace(lm, text: str, layer: int, *, max_tokens: int | None = None):
    """``(capture of layer, gate[token, neuron] or None)``: ``a`` of ``layer`` on the prompt in
    sequence mode and, for gated FFNs, ``act(gate)`` recorded in the same forward."""
    from tda.activations.capture import capture
    from tda.activations.neuron_corpus import gate_overrides
    from tda.models.dispatch import linear_overrides

    store: dict[int, list[torch.Tensor]] = {}
    with linear_overrides(gate_overrides(lm, [layer], store)):
        cap = capture(lm, text, [layer], "sequence", max_tokens=max_tokens)
    gate = None
    if lm.ffn.gated:
        rows = torch.cat(store[layer]).float().cpu()  # every position of every chunk, BOS included
        gate = rows[rows.shape[0] - cap.n_tokens:]
    return cap, gate


# ----- (b) corpus contexts -----------------------------------------------------------------------
def corpus_contexts(stats, tokenizer, layer: int, neuron: int, *, k: int = TOP_CONTEXTS,
                    window: int = WINDOW) -> dict:
    """The ``k`` highest (``top``) and lowest (``bottom``) activations over the corpus, each with
    ``window`` tokens of context either side (within its text)."""
    out = {}
    for name, values, index in (("top", stats.top_values, stats.top_index),
                                ("bottom", stats.bottom_values, stats.bottom_index)):
        rows = []
        for v, g in zip(values[layer, :k, neuron].tolist(), index[layer, :k, neuron].tolist()):
            text, pos = stats.locate(g)
            lo, hi = int(stats.offsets[text]), int(stats.offsets[text + 1])
            ids = stats.token_ids
            rows.append({
                "activation": float(v), "text": text, "position": pos,
                "token": token_text(tokenizer, int(ids[g])),
                "before": token_text(tokenizer, ids[max(lo, g - window): g].tolist()),
                "after": token_text(tokenizer, ids[g + 1: min(hi, g + 1 + window)].tolist()),
            })
        out[name] = rows
    return out


# ----- the whole profile -------------------------------------------------------------------------
def cutoffs(lm, layer: int, neuron: int, *, t_layer: float, inputs, density: float) -> dict:
    """Each method's cut-off for this neuron (what it is compared with is in ``on``)."""
    from tda.masks.input_thresholds import module_names

    norm = float(lm.ffn.down_norms(layer)[neuron])
    site = module_names(lm.model)[id(lm.ffn.out_module(layer))]
    out = {
        "cett": {"on": "|a|", "value": t_layer / max(norm, 1e-30), "t_layer": t_layer, "down_norm": norm},
        "teal": {"on": "|a|", "value": inputs.threshold(site, density), "density": density, "site": site},
        "cats": None,
    }
    if lm.ffn.gated:
        out["cats"] = {"on": "|act(gate)|", "value": inputs.threshold(f"gate_act.{layer}", density),
                       "density": density}
    return out


def neuron_profile(lm, layer: int, neuron: int, prompt: str, *, cett_target: float = 0.2,
                   density: float = DENSITY, k_tokens: int = TOP_TOKENS, k_contexts: int = TOP_CONTEXTS,
                   window: int = WINDOW, max_tokens: int | None = None, corpus=None, calibration=None,
                   inputs=None, trace=None, progress=None) -> dict:
    """Everything about neuron ``neuron`` of ``layer`` for ``prompt`` as one JSON-able dict.

    ``corpus`` (:class:`tda.activations.neuron_corpus.CorpusStats`), ``calibration`` (CETT
    thresholds at ``cett_target``) and ``inputs`` (TEAL/CATS quantiles) default to the cached
    ones over the shipped corpus (computed on first use; ``progress(done, total)`` follows the
    corpus pass). ``trace`` is a :func:`prompt_trace` result of this prompt and layer, when the
    caller already has it.
    """
    from tda.activations.neuron_corpus import load_or_compute_corpus_stats
    from tda.masks.build import check_density
    from tda.masks.calibrate import load_or_calibrate
    from tda.masks.input_thresholds import load_or_calibrate_inputs

    ffn = lm.ffn
    layer, neuron = check_neuron(layer, neuron, ffn.n_layers, ffn.d_ff)
    density = check_density(density)
    cap, gate = trace or prompt_trace(lm, prompt, layer, max_tokens=max_tokens)
    calibration = calibration or load_or_calibrate(lm, target=cett_target)
    inputs = inputs or load_or_calibrate_inputs(lm)
    corpus = corpus or load_or_compute_corpus_stats(lm, progress=progress)
    t_layer = float(calibration.thresholds[layer])
    cuts = cutoffs(lm, layer, neuron, t_layer=t_layer, inputs=inputs, density=density)
    q = corpus.quantiles[layer, :, neuron].float()
    gq = corpus.gate_quantiles[layer, :, neuron].float() if corpus.gate_quantiles is not None else None
    lv = corpus.levels.double()
    beyond = {m: fraction_beyond(q, cuts[m]["value"], lv) for m in ("cett", "teal")}
    if gq is not None and cuts["cats"] is not None:
        beyond["cats"] = fraction_beyond(gq, cuts["cats"]["value"], lv)
    acts = cap.layer(layer)  # [token, neuron]
    masks = mask_membership(
        acts, neuron, down_norms=ffn.down_norms(layer).cpu(), static_scores=ffn.static_scores(layer).cpu(),
        t_layer=t_layer, density=density, teal_cut=cuts["teal"]["value"], gate=gate,
        cats_cut=cuts["cats"]["value"] if cuts["cats"] else None,
    )
    return {
        "model_id": lm.model_id, "layer": layer, "neuron": neuron, "n_layers": ffn.n_layers, "d_ff": ffn.d_ff,
        "gated": ffn.gated, "activation_fn": ffn.act_name, "cett_target": float(calibration.target),
        "density": density,
        "prompt": {
            "tokens": [token_text(lm.tokenizer, i) for i in cap.token_ids], "token_ids": list(cap.token_ids),
            "activation": [float(x) for x in acts[:, neuron]],
            "gate": None if gate is None else [float(x) for x in gate[:, neuron]],
        },
        "cutoffs": cuts,
        "corpus": {
            "n_texts": corpus.n_texts, "n_tokens": corpus.n_tokens,
            **corpus_contexts(corpus, lm.tokenizer, layer, neuron, k=k_contexts, window=window),
            "levels": [float(x) for x in lv], "quantiles": [float(x) for x in q], "gate_quantiles": None if gq is None else [float(x) for x in gq],
            "fraction_beyond": beyond,
        },
        "vocab": vocab_effect(lm, layer, neuron, k_tokens),
        "masks": masks,
    }
