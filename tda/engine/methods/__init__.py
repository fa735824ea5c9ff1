"""The sparse methods, one module each; the table of them is :mod:`tda.engine.methods.registry`."""
