"""Stage 5 — evaluation: mask recall against decode activations (:mod:`.recall`), quality
(:mod:`.quality`, :mod:`.scoring`, the lm-eval wrapper :mod:`.lm_eval_model`), latency
(:mod:`.bench`) and the bytes-read ceiling (:mod:`.ceiling`); Plotly builders beside the code
whose rows they draw (:mod:`.recall_plots`, :mod:`.quality_plots`)."""
