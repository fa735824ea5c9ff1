"""How long pages 1–2 take to update after a prompt edit (64-token prompt, warm model).

    python benchmarks/app_update.py [--model gemma-3-270m] [--tokens 64] [--repeats 5] [--threads N] [--apptest]

Times the functions the pages call (:mod:`app.views`, the captures, the Plotly JSON that
``st.plotly_chart`` sends) for a *new* prompt each repeat, so no per-prompt cache helps; the model,
its calibration and its weight norms are warm (loaded once before timing), as on a running server.
``--apptest`` also times whole script reruns through ``streamlit.testing.v1.AppTest`` after a
prompt edit (Streamlit's own overhead included). Prints one line per measurement (median, max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prompt_of(lm, n_tokens: int, variant: int) -> str:
    """About ``n_tokens`` prompt tokens of the XSum demonstration, with a different last word."""
    from tda.common.data import xsum_demo

    words = xsum_demo()["article"].split()
    n_tokens += 1 if lm.tokenizer.bos_token_id is not None else 0  # BOS is not a prompt token
    text = ""
    for k in range(8, len(words) + 1):
        text = " ".join(words[:k])
        if len(lm.tokenizer(text)["input_ids"]) > n_tokens:
            text = " ".join(words[: k - 1])
            break
    swaps = ["city", "town", "village", "region", "capital", "island", "harbour", "valley", "county", "coast"]
    return f"{text.rsplit(' ', 2)[0]} {swaps[variant % len(swaps)]} {swaps[(variant // len(swaps)) % len(swaps)]}"


def stat(name: str, xs: list[float]) -> None:
    print(f"{name:<46} median {statistics.median(xs) * 1000:8.1f} ms   max {max(xs) * 1000:8.1f} ms   (n={len(xs)})")


def time_functions(lm, n_tokens: int, repeats: int) -> None:
    import plotly.io as pio

    from analysis.activation import make_rule
    from analysis.studies import random_word_text
    from app.views import inertia as inertia_views
    from app.views import masks as mask_views
    from tda.activations.capture import capture, tokenize
    from tda.masks.build import model_down_norms
    from tda.masks.calibrate import load_or_calibrate

    rule = make_rule(lm, "cett", 0.2)
    thresholds = load_or_calibrate(lm).thresholds
    norms = model_down_norms(lm)
    layer = min(6, lm.ffn.n_layers - 1)
    labels = lambda cap: [lm.tokenizer.decode([i]) for i in cap.token_ids]  # noqa: E731
    # warm-up (first forward passes allocate)
    warm = prompt_of(lm, n_tokens, 99)
    capture(lm, warm, None, "sequence"), capture(lm, warm, None, "isolated")
    t_cap, t_ctl, t_p1, t_p1json, t_p2, tot1, tot2 = [], [], [], [], [], [], []
    for r in range(repeats):
        text = prompt_of(lm, n_tokens, r)
        n = len(tokenize(lm, text)) - (1 if lm.tokenizer.bos_token_id is not None else 0)
        t0 = time.perf_counter()
        seq = capture(lm, text, None, "sequence", max_tokens=256)
        caps = {("real", "sequence"): seq, ("real", "isolated"): capture(lm, text, None, "isolated", max_tokens=256)}
        t1 = time.perf_counter()
        t_cap.append(t1 - t0)
        # the control (random words, prompt length rounded up to 16) is cached by the page; it is
        # recomputed only when an edit crosses a multiple of 16 tokens: timed apart
        control = random_word_text(lm, inertia_views.control_length(len(seq.tokens)), 0)[0]
        caps.update({("random", m): capture(lm, control, None, m, max_tokens=256) for m in ("sequence", "isolated")})
        t_ctl.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        view = inertia_views.inertia_view(caps, rule, model_id=lm.model_id, layer=layer, neurons=(0, lm.ffn.d_ff),
                                    max_cols=512, tokens=labels(seq))
        t2 = time.perf_counter()
        pio.to_json(view["figure"], validate=False)
        pio.to_json(view["curves"], validate=False)
        t3 = time.perf_counter()
        res = mask_views.mask_view(seq, rule, "tda", density=None, scale=1.0, layer=layer, thresholds=thresholds,
                                down_norms=norms, static_scores=None)
        from app.figures import coverage_figure, density_per_layer_figure

        pio.to_json(coverage_figure(seq.tokens, res["token_recall"], res["token_mass_recall"]), validate=False)
        pio.to_json(density_per_layer_figure(seq.layers, {"m": res["mask_density"], "t": res["token_density"]}),
                    validate=False)
        t4 = time.perf_counter()
        t_p1.append(t2 - t1)
        t_p1json.append(t3 - t2)
        t_p2.append(t4 - t3)
        tot1.append(t_cap[-1] + t3 - t1)
        tot2.append(t4 - t3 + t_cap[-1] / 2)  # page 2 needs the prompt's sequence capture only (~1/2)
    print(f"model {lm.model_id} ({lm.dtype}), {n} prompt tokens, layer {layer}, torch threads "
          f"{__import__('torch').get_num_threads()}")
    stat("captures of the prompt (both modes, all layers)", t_cap)
    stat("control captures (when the 16-token bucket changes)", t_ctl)
    stat("page 1 numbers + heatmap + curves figures", t_p1)
    stat("page 1 figures -> JSON", t_p1json)
    stat("page 2 masks + coverage + figures", t_p2)
    stat("PAGE 1 total after a prompt edit", tot1)
    stat("PAGE 2 total after a prompt edit (approx.)", tot2)


def time_apptest(spec: str, n_tokens: int, repeats: int) -> None:
    from streamlit.testing.v1 import AppTest

    from tda.models.load import load_model

    os.environ["TDA_APP_MODEL"] = spec
    lm = load_model(spec)
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=600).run()
    for page, key in (("page_inertia.py", "prompt_inertia"), ("page_masks.py", "prompt_masks")):
        at.switch_page(page).run()
        xs = []
        for r in range(repeats):
            text = prompt_of(lm, n_tokens, 10 + r + (0 if page == "page_inertia.py" else 20))
            t0 = time.perf_counter()
            at.text_area(key=key).input(text).run()
            xs.append(time.perf_counter() - t0)
            if at.exception or at.error:
                print("page error:", [e.value for e in at.exception], [e.value for e in at.error])
        stat(f"AppTest rerun after prompt edit: {page}", xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--apptest", action="store_true", help="also time full AppTest script reruns")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, as the app's TDA_APP_THREADS (default 1; 0: torch's default)")
    args = ap.parse_args()
    os.environ["TDA_APP_THREADS"] = str(args.threads)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    from tda.models.load import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model)
    print(f"model load {time.perf_counter() - t0:.1f} s (not part of the update time)")
    time_functions(lm, args.tokens, args.repeats)
    if args.apptest:
        time_apptest(args.model, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
