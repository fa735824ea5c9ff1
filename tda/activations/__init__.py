"""Stage 2 — activation capture: ``acts[layer, token, neuron]`` of a prompt (sequence, isolated,
batch; hooks or TransformerLens) in :mod:`.capture`, and of the tokens a dense generation
produces in :mod:`.decode`."""
