"""Stage 3 — masks: which neurons to keep. Mask constructors (TDA, GRIFFIN, TT, static, random)
in :mod:`.build`, the CETT rule in :mod:`.cett`, per-layer threshold calibration in
:mod:`.calibrate`."""
