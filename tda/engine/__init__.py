"""Inference engine pieces (sparse linear kernels in :mod:`tda.engine.kernels`)."""
