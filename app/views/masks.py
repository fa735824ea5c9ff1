"""Page 2 (Masks): each token's active set against one sequence mask."""

from __future__ import annotations

import torch

from app.views.captures import layer_index

MISSED_SHOWN = 12  # missed neurons listed per token (largest output norm first)


def sequence_mask(method: str, cap, *, density, scale: float, thresholds, down_norms, static_scores):
    """The sequence-wise :class:`tda.masks.build.NeuronMask` of ``method`` for a capture of all layers."""
    from tda.masks.build import build_mask, tda_mask

    if method == "tda":
        return tda_mask(cap.acts, down_norms, thresholds, scale=scale)
    return build_mask(method, cap.acts, density=density, thresholds=thresholds, down_norms=down_norms,
                      static_scores=static_scores)


COVERED, MISSED, IDLE = 1, 2, 3  # coverage image categories (0: neither active nor kept)
METHODS = ("tda", "tda_matched", "griffin", "static", "random")  # sequence-wise masks of tda.masks.build


def method_label(method: str) -> str:
    """``name — description``: the engine registry's for its methods (:func:`app.views.generate.method_label`);
    ``tda_matched`` (a mask of :mod:`tda.masks.build`, not an engine method) described here."""
    from app.views.generate import method_label as registry_label

    if method == "tda_matched":
        return "tda_matched — TDA's prompt scores, every t_L scaled by one factor so the mean density hits the target"
    return registry_label(method)


def density_note(method: str, density, scale: float, layer: int, mask_density: list[float]) -> str:
    """One line: how the method's target relates to the layer's own density."""
    mean = sum(mask_density) / len(mask_density)
    here = mask_density[layer]
    if method == "tda_matched":
        return (f"Target {density:g} is the mean over layers ({mean:.3f}); TDA's own per-layer thresholds "
                f"decide how it spreads, so layer {layer} keeps {here:.3f}.")
    if method == "tda":
        return (f"TDA keeps neurons whose prompt score passes {scale:g} × t_L: no target; layer {layer} keeps "
                f"{here:.3f}, the mean over layers is {mean:.3f}.")
    return f"{method} keeps the same fraction {density:g} in every layer (layer {layer}: {here:.3f})."


def coverage_image(active, keep):
    """``cat[token, neuron]``: :data:`COVERED` (active and kept), :data:`MISSED` (active, not kept),
    :data:`IDLE` (kept, not active for that token), 0 otherwise. ``active[token, neuron]``, ``keep[neuron]``."""
    keep = keep[None, :].expand_as(active)
    cat = torch.zeros(active.shape, dtype=torch.uint8)
    cat[active & keep] = COVERED
    cat[active & ~keep] = MISSED
    cat[~active & keep] = IDLE
    return cat


def mask_view(cap, rule, method: str, *, density, scale: float, layer: int, thresholds, down_norms,
              static_scores, tokens=None) -> dict:
    """Page 2: each token's active set (``rule``) against one sequence mask, at ``layer``.

    Per-token coverage is :func:`tda.evaluate.recall.mask_metrics` with each token as its own group
    (recall = |mask ∧ A_t| / |A_t|, mass recall = covered output norm / all output norm).
    """
    from analysis.inertia import inertia_table
    from tda.evaluate.recall import mask_metrics, output_mass

    li = layer_index(cap, layer)
    active = rule.active_capture(cap)  # [layer, token, neuron]
    mask = sequence_mask(method, cap, density=density, scale=scale, thresholds=thresholds,
                         down_norms=down_norms, static_scores=static_scores)
    norms = down_norms[cap.layers]
    mass = output_mass(cap.acts, norms)  # [layer, token, neuron]
    per_layer = mask_metrics(mask.keep, active, mass)
    n_tok = len(cap.tokens)
    per_token = mask_metrics(mask.keep[li].expand(n_tok, -1), active[li][:, None, :], mass[li][:, None, :])
    missed = active[li] & ~mask.keep[li]
    rows = []
    for t, tok in enumerate(tokens if tokens is not None else cap.tokens):
        idx = torch.nonzero(missed[t]).flatten()
        order = torch.argsort(mass[li, t, idx], descending=True)[:MISSED_SHOWN]
        shown = ", ".join(str(int(i)) for i in idx[order])
        rows.append({
            "#": t, "token": tok, "active": int(active[li, t].sum()),
            "covered": int((active[li, t] & mask.keep[li]).sum()), "missed": int(missed[t].sum()),
            "recall": round(float(per_token["recall"][t]), 4),
            "mass recall": round(float(per_token["mass_recall"][t]), 4),
            "missed neurons": shown + (" …" if len(idx) > MISSED_SHOWN else ""),
        })
    table = inertia_table(active, cap.layers)
    return {
        "rows": rows,
        "token_recall": [float(x) for x in per_token["recall"]],
        "token_mass_recall": [float(x) for x in per_token["mass_recall"]],
        "layer_recall": float(per_layer["recall"][li]),
        "layer_mass_recall": float(per_layer["mass_recall"][li]),
        "mask_density": [float(x) for x in mask.density_per_layer()],
        "token_density": [float(r["density"]) for r in table],
        "mask": mask,
        "image": coverage_image(active[li], mask.keep[li]),
        "active_counts": active[li].sum(0),
        "note": density_note(method, density, scale, layer, [float(x) for x in mask.density_per_layer()]),
    }
