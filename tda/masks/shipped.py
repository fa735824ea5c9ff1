"""The default calibrations shipped with the package (``tda/assets/calibration``).

For the embedded model on the shipped corpus: CETT thresholds ``t_L`` at :data:`TARGETS` and the
input-threshold quantiles of the token-wise methods (TEAL, CATS's gate sites, the lm_head). The
files carry the cache's own names (model id, corpus hash, target), so
:func:`tda.masks.calibrate.load_or_calibrate` and
:func:`tda.masks.input_thresholds.load_or_calibrate_inputs` use them only on an exact match, and a
fresh machine starts generating without calibrating.

Regenerate after a change to the corpus, the model conversion or the calibration code::

    python -m tda.masks.shipped          # writes tda/assets/calibration/*.json (a few minutes)

``tests/test_shipped_calibration.py`` (slow) recomputes them and compares.
"""

from __future__ import annotations

from tda.masks.cett import DEFAULT_CETT

TARGETS = (DEFAULT_CETT,)  # CETT targets shipped (the CLI's and the app's default)


def compute(lm, targets=TARGETS) -> dict[str, str]:
    """``{file name: JSON text}`` of every shipped calibration, computed afresh for ``lm``."""
    from tda.common.data import load_texts
    from tda.masks.calibrate import cache_path as cett_path
    from tda.masks.calibrate import calibrate, data_hash
    from tda.masks.input_thresholds import MAX_TEXTS, calibrate_inputs
    from tda.masks.input_thresholds import cache_path as inputs_path

    texts = [t for t in load_texts() if t.strip()]
    out = {}
    for target in targets:
        cal = calibrate(lm, texts, target)
        out[cett_path(lm.model_id, data_hash(texts), target).name] = cal.to_json()
    inp = calibrate_inputs(lm, texts[:MAX_TEXTS])
    out[inputs_path(lm.model_id, inp.data_hash).name] = inp.to_json()
    return out


def main() -> None:
    from tda.common.atomic import write_text_atomic
    from tda.masks.calibrate import SHIPPED_DIR
    from tda.models.load import DEFAULT_MODEL, load_model

    lm = load_model(DEFAULT_MODEL)
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in compute(lm).items():
        write_text_atomic(SHIPPED_DIR / name, text + "\n")
        print(SHIPPED_DIR / name)


if __name__ == "__main__":
    main()
