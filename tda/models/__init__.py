"""Stage 1 — models: spec parsing and loading (:mod:`.load`), the embedded Gemma cache
(:mod:`.embedded`), tiny test models' tokenizer (:mod:`.tiny_tokenizer`), one FFN adapter per
architecture (:mod:`.ffn`) and the per-context linear overrides every later stage uses
(:mod:`.dispatch`)."""
