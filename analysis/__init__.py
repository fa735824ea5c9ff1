"""The paper's studies on top of ``tda``: pure functions for the CLI, the report and the app.

Rules (``analysis.activation``): ``cett_rule(lm, target)``, ``topp_rule(p)``, ``make_rule(lm, kind, value)``
→ :class:`ActivationRule` with ``.active(acts, layers)`` / ``.active_capture(cap)`` / ``.describe()``.

Study 1 (``analysis.studies``, ``analysis.inertia``):
``inertia_for_prompt(lm, rule, prompt=None, n_tokens=16, seed=0, k=4, layers=None)`` → ``InertiaRun``
(``.result`` JSON-able numbers, ``.captures[(source, mode)]``); ``inertia_from_captures(captures, rule, k,
model_id=...)``; ``claim4_verdict(result, control=None)``; metrics on boolean masks:
``inertia_table``, ``history_jaccard``, ``concentration``, ``self_jaccard``, ``mode_differences``.
Control: ``analysis.random_control.random_weights_like(lm, seed)``.

Appendix C: ``run_scale(lm, rules, texts, n_tokens=32, k=4, seed=0, keep_rates=None)``.

Study 2 (``analysis.similarity``, ``analysis.verdicts``): ``similarity_study(lm, samples, cett_rule, ...)``
→ matrices per measure and layer group + verdicts; ``sample_patterns``, ``layer_similarity``,
``group_similarity``, ``verdict_rows``; ``evaluate_all(S, ids, duplicates)`` for any matrix.

Figures (``analysis.plots``, pure Plotly): ``inertia_heatmaps``, ``all_layer_view``, ``inertia_curves``,
``samples_heatmaps``, ``similarity_heatmap``, ``similarity_grid``, ``verdict_grid``.
Everything at once: ``analysis.pipeline.run_studies`` / ``write_outputs`` (``tda figures``).
"""
