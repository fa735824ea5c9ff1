"""Dense greedy generation that records the FFN activations of the prompt and of every decode step.

``generate_with_capture(lm, prompt, new_tokens)`` runs the prompt once (prefill, KV cache), then
feeds each generated token back one at a time. Pre-hooks on every layer's down projection
(``lm.ffn.out_module(L)``; their input is the neuron activation ``a``) record:

- ``prefill_acts[layer, token, neuron]``: the prompt's tokens (BOS excluded, as in
  :func:`tda.activations.capture.capture`), and
- ``decode_acts[layer, step, neuron]``: the generated token of step ``s`` (``token_ids[s]``) as the
  model processes it with the cache — one position per hook call. There are ``new_tokens`` steps:
  the last generated token is also run through the model (its logits are not needed), so every
  generated token has its decode-time activations.

Hooks record only inside this call's context (a ContextVar, like :mod:`tda.activations.capture`), so another
thread using the same shared model at the same time is neither recorded nor disturbed. Greedy,
batch 1, no early stop at EOS by default (a fixed number of decode steps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tda.activations.capture import activation_hooks, forward_chunks, has_bos, tokenize
from tda.common.errors import BadInput


@dataclass
class DecodeCapture:
    """Prefill and decode-time FFN activations of one greedy generation (float32, CPU).

    ``prefill_acts[layer, token, neuron]`` (prompt tokens, BOS excluded), ``decode_acts[layer, step,
    neuron]``; ``prompt_ids`` includes BOS when the model uses one; ``token_ids[step]`` are the
    generated tokens and ``text`` their decoding.
    """

    prefill_acts: torch.Tensor
    decode_acts: torch.Tensor
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    model_id: str
    meta: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return self.decode_acts.shape[1]


def check_new_tokens(new_tokens) -> int:
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise BadInput(f"new tokens must be an integer of at least 1, got {new_tokens}")
    return new_tokens


@contextlib.contextmanager
def recording(lm, layers: list[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Within the block, forwards *of this context* append each layer's ``a`` to ``store[layer]``.

    ``a`` is stored as ``[positions, d_ff]`` float32 CPU (batch 1; OPT's flattened rows too).
    Built on :func:`tda.activations.capture.activation_hooks` (removed on exit; other contexts ignored).
    """
    store: dict[int, list[torch.Tensor]] = {L: [] for L in layers}

    def record(L, a):
        store[L].append(a.reshape(-1, a.shape[-1]).float().cpu())

    with activation_hooks(lm, layers, record):
        yield store


def generate_with_capture(lm, prompt: str | list[int], new_tokens: int = 64, *, stop_at_eos: bool = False,
                          include_bos: bool = False) -> DecodeCapture:
    """Greedy dense generation of ``new_tokens`` tokens with decode-time activation capture.

    ``prompt``: text (tokenized with the model's special tokens) or token ids. Returns a
    :class:`DecodeCapture`; with ``stop_at_eos`` the generation may end early (fewer steps).
    """
    new_tokens = check_new_tokens(new_tokens)
    if isinstance(prompt, str):
        ids = tokenize(lm, prompt)
    else:
        ids = [int(i) for i in prompt]
        if not ids:
            raise BadInput("the prompt is empty")
    if len(ids) + new_tokens > lm.n_ctx:
        raise BadInput(f"prompt ({len(ids)} tokens) + {new_tokens} new tokens exceed the context of {lm.n_ctx}")
    from tda.activations.budget import prefill_plan

    chunk = prefill_plan(lm, len(ids), new_tokens, capture_layers=lm.ffn.n_layers,
                         what=f"recording a {new_tokens}-token generation after a {len(ids)}-token prompt").chunk
    start = 1 if (has_bos(lm) and not include_bos and ids and ids[0] == lm.tokenizer.bos_token_id) else 0
    if len(ids) <= start:
        raise BadInput("the prompt has no tokens besides BOS")
    layers = list(range(lm.ffn.n_layers))
    eos = lm.tokenizer.eos_token_id
    dev = lm.device
    generated: list[int] = []
    with recording(lm, layers) as store, torch.inference_mode():
        cache = lm.new_cache()
        kw = lm.cache_kw(cache)  # the cache is updated in place
        x = torch.tensor([ids], device=dev)
        if chunk < len(ids):  # a long prompt: all but its last position in chunks through the cache
            forward_chunks(lm, x[:, :-1], chunk, cache=cache)
            x = x[:, -1:]
        out = lm.model(input_ids=x, use_cache=True, **kw, logits_to_keep=1)
        prefill = {L: torch.cat(store[L]) for L in layers}
        for L in layers:
            store[L].clear()
        for step in range(new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            generated.append(nxt)
            x = torch.tensor([[nxt]], device=dev)
            last = step == new_tokens - 1 or (stop_at_eos and nxt == eos)
            if last:  # only the activations are needed: skip the lm_head
                lm.model.base_model(input_ids=x, use_cache=True, **kw)
                break
            out = lm.model(input_ids=x, use_cache=True, **kw, logits_to_keep=1)
    for L in layers:
        if len(store[L]) != len(generated) or any(a.shape[0] != 1 for a in store[L]):
            raise RuntimeError(f"decode capture of layer {L} saw {len(store[L])} calls for {len(generated)} steps")
    prefill_acts = torch.stack([prefill[L][start:] for L in layers])
    decode_acts = torch.stack([torch.cat(store[L]) for L in layers])
    return DecodeCapture(
        prefill_acts=prefill_acts, decode_acts=decode_acts, prompt_ids=ids, token_ids=generated,
        text=lm.tokenizer.decode(generated), model_id=lm.model_id,
        meta={"bos_excluded": bool(start), "d_ff": lm.ffn.d_ff, "dtype": str(lm.dtype).replace("torch.", "")},
    )
