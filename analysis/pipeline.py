"""``tda figures``: run every study on one model, build every figure, write report and manifest.

:func:`run_studies` computes (no files); :func:`write_outputs` writes into a staging folder
inside the output folder and moves the files into place only when everything succeeded, so a
failure never leaves a half-written ``figures/``. Numbers are rounded to 6 decimals in
``results.json`` and the report; the same model and settings give identical numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tda.common.errors import BadInput


@dataclass
class FigureSettings:
    layer: int | None = None          # the layer of the single-layer heatmaps (default: middle)
    cett: float = 0.2                 # CETT target of the primary rule
    top_p: float = 0.1                # fraction of the secondary rule
    k: int = 4                        # previous tokens in the history Jaccard
    n_tokens: int = 16                # Study 1 tokens
    seed: int = 0                     # random tokens, random words, random-weights control
    scale_samples: int = 120          # Appendix C sequences (the shipped corpus has 120)
    scale_tokens: int = 32            # tokens per Appendix C sequence
    control: bool = True              # run the random-weights control
    samples: str | None = None        # Study 2 sample file (default data/samples13.json)
    png: bool = True

    def check(self) -> FigureSettings:
        from analysis.activation import check_top_p
        from tda.masks.cett import check_target

        check_target(self.cett)
        check_top_p(self.top_p)
        if self.k < 1:
            raise BadInput("k must be at least 1")
        if self.n_tokens < 2:
            raise BadInput("Study 1 needs at least 2 tokens")
        if self.scale_samples < 2 or self.scale_tokens < 2:
            raise BadInput("the scale study needs at least 2 samples of at least 2 tokens")
        return self


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is (or could be created as) a writable folder, creating nothing."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BadInput(f"output folder {p} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise BadInput(f"output folder {p} is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"cannot create output folder {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"cannot create output folder {p}: {parent} is not writable")
    return p


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tda-workbench")
    except Exception:
        return "unknown"


def round_floats(obj, nd: int = 6):
    """Round every float in a JSON-like structure (stable text across runs)."""
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: round_floats(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, nd) for v in obj]
    return obj


def _rules(lm, s: FigureSettings, progress=None) -> dict:
    from analysis.activation import cett_rule, topp_rule

    cett, topp = cett_rule(lm, s.cett, progress=progress), topp_rule(s.top_p)
    return {cett.short: cett, topp.short: topp}


def run_studies(lm, settings: FigureSettings | None = None, *, log=print, progress=None) -> dict:
    """Every study on ``lm``; returns ``{"run": JSON-able results, "figures": {name: Figure},
    "captions": {...}, "timings": {...}}``."""
    from analysis import plots
    from analysis.inertia import claim4_verdict
    from analysis.random_control import random_weights_like
    from analysis.similarity import MEASURES, layer_groups, similarity_study
    from analysis.studies import capture_sources, inertia_from_captures, run_scale, study1_inputs
    from tda.common.data import load_samples, load_texts

    s = (settings or FigureSettings()).check()
    samples = load_samples(s.samples)
    n_layers = lm.ffn.n_layers
    layer = n_layers // 2 if s.layer is None else s.layer
    if not -n_layers <= layer < n_layers:
        raise BadInput(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    layer %= n_layers
    groups = layer_groups(n_layers)
    timings: dict[str, float] = {}
    figs, captions = {}, {}

    def add(name, fig, caption):
        figs[name], captions[name] = fig, caption

    # ----- Study 1 ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    log("study 1: rules and captures (trained model)")
    rules = _rules(lm, s)
    inputs = study1_inputs(lm, s.n_tokens, s.seed)
    texts = {"real": inputs["real"], "random": inputs["random"]}
    caps = capture_sources(lm, texts)
    trained = {r: inertia_from_captures(caps, rule, s.k, model_id=lm.model_id, inputs=inputs) for r, rule in rules.items()}
    control, ccaps, clm, crules = None, None, None, None
    if s.control:
        log("study 1: random-weights control (built and CETT-calibrated once, cached)")
        clm = random_weights_like(lm, s.seed)
        crules = _rules(clm, s)
        ccaps = capture_sources(clm, texts)
        control = {r: inertia_from_captures(ccaps, rule, s.k, model_id=clm.model_id, inputs=inputs)
                   for r, rule in crules.items()}
    verdicts = {r: claim4_verdict(trained[r], control[r] if control else None) for r in rules}
    for v in verdicts.values():
        log(v["statement"])
    timings["study1"] = time.perf_counter() - t0

    # ----- Appendix C ------------------------------------------------------------------------
    t0 = time.perf_counter()
    corpus = load_texts()[: s.scale_samples]
    if len(corpus) < s.scale_samples:
        log(f"appendix C: the corpus has only {len(corpus)} texts")
    log(f"appendix C: {len(corpus)} sequences x {s.scale_tokens} tokens, real text vs random words")
    sc = run_scale(lm, list(rules.values()), corpus, n_tokens=s.scale_tokens, k=s.k, seed=s.seed, keep_rates=[layer],
                   progress=progress)
    csc = None
    if s.control:
        log("appendix C: random-weights control")
        csc = run_scale(clm, list(crules.values()), corpus, n_tokens=s.scale_tokens, k=s.k, seed=s.seed,
                        keep_rates=[layer], progress=progress)
    timings["appendix_c"] = time.perf_counter() - t0

    # ----- Study 2 ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    log(f"study 2: {len(samples)} samples")
    cett_key = next(iter(rules))
    sim = similarity_study(lm, samples, rules[cett_key], groups=None)
    timings["study2"] = time.perf_counter() - t0

    # ----- figures ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    mid = lm.model_id
    add(f"study1_heatmaps_L{layer}", plots.inertia_heatmaps(caps, layer, result=trained[cett_key], model_id=mid),
        f"Study 1, layer {layer}: |a| maps (tokens × neurons), XSum prompt vs random tokens, isolated vs "
        f"sequence, shared colour scale; titles give density, J and n50 under {rules[cett_key].label}")
    if s.control:
        add(f"study1_heatmaps_L{layer}_control",
            plots.inertia_heatmaps(ccaps, layer, result=control[cett_key], model_id=clm.model_id),
            f"Study 1 control: the same on the random-weights model ({clm.model_id})")
    add("study1_all_layers", plots.all_layer_view(caps, model_id=mid),
        "Study 1, all layers: |a| / per-layer ceiling, rows = layer × token, neurons max-|a| pooled")
    for r in rules:
        res = {"trained": trained[r]} | ({"control": control[r]} if control else {})
        add(f"study1_curves_{r}", plots.inertia_curves(res, title=f"{mid}: Study 1 metrics per layer, rule "
                                                             f"{rules[r].label} (dotted: random-weights control)"),
            f"Study 1 per-layer Jaccard with history, n50 and density, rule {r}, trained vs control")
    for r in rules:
        summ = sc["result"]["by_rule"][r]
        add(f"appC_samples_L{layer}_{r}",
            plots.samples_heatmaps(sc["rates"][r], 0, layer, model_id=mid, rule_label=rules[r].label, summary=summ,
                                   max_cols=512),
            f"Appendix C, layer {layer}: samples × neurons firing rate, real text vs random words, isolated vs "
            f"sequence, rule {r}")
        res = {"trained": summ} | ({"control": csc["result"]["by_rule"][r]} if csc else {})
        add(f"appC_curves_{r}", plots.inertia_curves(res, keys=("jaccard", "n50_pooled", "density"),
                                                     title=f"{mid}: Appendix C metrics per layer, rule {rules[r].label} "
                                                           f"(dotted: random-weights control)"),
            f"Appendix C per-layer Jaccard, pooled n50 and density, rule {r}, trained vs control")
    for m in MEASURES:
        add(f"study2_similarity_{m}", plots.similarity_grid(sim, m),
            f"Study 2: 13×13 similarity, {MEASURES[m]['label']}, per layer group")
    if sim["observations"]:
        add("study2_verdicts", plots.verdict_grid(sim), "Study 2: verdicts of observations (a)–(e) per measure and group")
    timings["figures_build"] = time.perf_counter() - t0

    run = {
        "model_id": mid, "control_id": clm.model_id if clm else None, "version": package_version(),
        "layer": layer, "groups": groups,
        "study1": {"inputs": inputs, "trained": trained, "control": control,
                   "verdicts": verdicts},
        "scale": {"trained": sc["result"], "control": csc["result"] if csc else None},
        "study2": sim,
    }
    return {"run": round_floats(run), "figures": figs, "captions": captions, "timings": timings,
            "settings": asdict(s) | {"layer": layer}}


def _figure_entries(files: dict[str, dict], captions: dict[str, str]) -> dict[str, dict]:
    return {n: {**f, "caption": captions[n], "study": n.split("_", 1)[0]} for n, f in files.items()}


def write_outputs(out_dir: str | os.PathLike, studies: dict, *, log=print) -> dict:
    """Write figures, ``results.json``, ``manifest.json`` and ``REPORT.md`` into ``out_dir``.

    Everything is written to a staging folder first and moved into place at the end; files of
    an earlier run that this run does not produce (named in the old manifest) are removed.
    """
    from analysis.export import export_figures
    from analysis.report import manifest, render_report
    from tda.common.atomic import check_output_dir

    out = check_output_dir(out_dir)
    run = dict(studies["run"])
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    t0 = time.perf_counter()
    try:
        files, err = export_figures(studies["figures"], stage, png=studies["settings"].get("png", True),
                                    title=f"tda-workbench studies — {run['model_id']}", captions=studies["captions"])
        if err:
            log(f"PNG export failed, HTML only: {err}")
        run["figures"] = _figure_entries(files, studies["captions"])
        run["png_error"] = err
        (stage / "results.json").write_text(json.dumps(run, indent=1, ensure_ascii=False), encoding="utf-8")
        (stage / "manifest.json").write_text(manifest(run, studies["settings"]), encoding="utf-8")
        (stage / "REPORT.md").write_text(render_report(run), encoding="utf-8")
        old = set()
        try:
            prev = json.loads((out / "manifest.json").read_text())
            old = {f.get("png") for f in prev.get("figures", {}).values()} - {None}
        except (OSError, ValueError, AttributeError):
            pass
        new_files = sorted(p.name for p in stage.iterdir())
        for name in new_files:
            os.replace(stage / name, out / name)
        for name in old - set(new_files):
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    studies["timings"]["figures_write"] = time.perf_counter() - t0
    return {"out": str(out), "files": new_files, "png_error": err}
