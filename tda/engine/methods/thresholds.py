"""Calibrated thresholds the methods share (cached on disk by :mod:`tda.masks`)."""

from __future__ import annotations

import threading

_LOCK = threading.Lock()


def cett_thresholds(lm, cfg) -> list[float]:
    """Per-layer CETT thresholds ``t_L``: ``cfg.thresholds``, or calibrated at ``cfg.cett`` (cached)."""
    if cfg.thresholds is not None:
        return list(cfg.thresholds)
    return calibrated_cett(lm, cfg.cett, None if cfg.calibration_texts is None else list(cfg.calibration_texts))


def calibrated_cett(lm, cett: float, texts: list[str] | None = None) -> list[float]:
    """Per-layer CETT thresholds ``t_L`` (cached; one calibration at a time in this process)."""
    from tda.masks.calibrate import load_or_calibrate

    with _LOCK:
        return list(load_or_calibrate(lm, texts=texts, target=cett).thresholds)


def input_thresholds(lm, cfg):
    """Per-site ``|x|`` quantiles (:class:`tda.masks.input_thresholds.InputThresholds`, cached)."""
    from tda.masks.input_thresholds import load_or_calibrate_inputs

    texts = None if cfg.calibration_texts is None else list(cfg.calibration_texts)
    with _LOCK:
        return load_or_calibrate_inputs(lm, texts)
