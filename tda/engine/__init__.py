"""Stage 4 — the engine: sparse generation. Sliced and token-wise FFN overrides (:mod:`.sparse`),
the fast dense linear path (:mod:`.fastpath`) and generation inside Hugging Face ``generate``
(:mod:`.generate`)."""
