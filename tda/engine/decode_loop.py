"""A lean decode loop: Hugging Face's ``_sample`` (greedy or sampling), minus its per-step plumbing.

Between two forwards of a decode step, ``generate`` spends ~0.7 ms on CPU (measured on Gemma 3
270M, fp32 and bf16 alike: 3-5% of a bf16 step) preparing inputs (``prepare_inputs_for_generation``,
clones, ``_update_model_kwargs_for_generation``), concatenating ``input_ids``, and running its
stopping criteria and stop checks. :func:`decode` is the same loop written directly for the case
the engine decodes most — an unpadded batch, a KV cache it owns, greedy (or sampling with
temperature, top-k and top-p: Hugging Face's own warpers in its order, then ``multinomial``):

- the forward gets what ``generate`` passes: the tokens the cache has not seen (the whole
  uncached prompt first, then one token), the all-ones attention mask over every position so far,
  the cache, ``use_cache=True`` and ``logits_to_keep=1`` when the model takes it;
- the last position's logits are copied to fp32 (read in place when no processor writes into
  them: each says so with ``writes_scores = False``; a 1 MB copy of Gemma 3's 262k logits took
  0.1-0.2 ms a step), run through the caller's logits processors
  (``processors(input_ids[B, t], scores[B, V]) -> scores``, in order) and ``argmax``-ed
  (:func:`tda.engine.kernels.argmax_last`: the same index on every thread; torch's one-thread
  ``argmax`` takes ~0.2 ms over Gemma 3's 262k logits);
- with stop tokens, a finished row gets ``pad_id`` from then on, and the loop ends when every row
  has finished or ``max_new_tokens`` are generated (Hugging Face's ``EosTokenCriteria`` and
  ``MaxLengthCriteria``).

:func:`applicable` says when it is the same as ``generate``: no padding, a decoder-only model whose
own ``generation_config`` adds no logits processor, warper or stopping rule of its own (anything
beyond token ids and output flags sends the call to ``generate``). Tokens are identical to
``generate``'s, sampled ones with the same seed too (tests/test_decode_loop.py, every tiny family
and Gemma 3 270M).
"""

from __future__ import annotations

import inspect

import torch

from tda.engine.kernels import argmax_last

# generation_config entries that change nothing in an unpadded generate call of ours (greedy; sampling: minus
# _SAMPLING_EXTRAS)
_NEUTRAL = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache", "transformers_version",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "typical_p", "epsilon_cutoff", "eta_cutoff", "cache_implementation", "cache_config", "_from_model_config",
}
_NEUTRAL_VALUES = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "min_length": 0, "renormalize_logits": False}
# warpers ``generate`` would add from the model's config when sampling (ours: temperature, top-k, top-p)
_SAMPLING_EXTRAS = {"min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h"}


def _config_is_neutral(model, *, do_sample: bool = False) -> bool:
    """The model's own ``generation_config`` (which ``generate`` merges under ours) asks for nothing
    the lean loop does not do: only the keys of :data:`_NEUTRAL`, or defaults (and, when sampling,
    none of the warpers of :data:`_SAMPLING_EXTRAS`)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return True
    try:
        diff = gc.to_diff_dict()
    except Exception:  # noqa: BLE001 - an unreadable config: let generate handle it
        return False
    for k, v in diff.items():
        if v is None or (k in _NEUTRAL and not (do_sample and k in _SAMPLING_EXTRAS)):
            continue
        if k in _NEUTRAL_VALUES and v == _NEUTRAL_VALUES[k]:
            continue
        return False
    return True


def _takes_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an uninspectable forward
        return False


def applicable(model, attention_mask: torch.Tensor, cache, *, do_sample: bool) -> bool:
    """:func:`decode` gives exactly what ``model.generate`` would: every position real (no left
    padding), a cache given, decoder-only, a neutral ``generation_config``."""
    cfg = getattr(model, "config", None)
    return (cache is not None and bool(attention_mask.all()) and not getattr(cfg, "is_encoder_decoder", False)
            and _config_is_neutral(model, do_sample=do_sample))


def warpers(temperature: float, top_k: int, top_p: float) -> list:
    """Hugging Face's own sampling warpers, in ``generate``'s order and under its conditions:
    temperature (≠ 1), top-k (≠ 0), top-p (< 1), each keeping at least one token."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out = []
    if temperature is not None and temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def decode(model, input_ids: torch.Tensor, cache, cache_kw: str, *, max_new_tokens: int, processors=(),
           stop_ids: list[int] | None = None, pad_id: int = 0, sample: tuple | None = None) -> torch.Tensor:
    """``ids[B, T + n]``: the prompt ``input_ids[B, T]`` and ``n <= max_new_tokens`` new tokens (greedy),
    decoded through ``cache`` (passed as ``cache_kw``; it may already hold a prefix of the prompt,
    e.g. from a chunked prefill). See the module doc for the rules, which are ``generate``'s.

    ``sample=(temperature, top_k, top_p)`` samples instead, as ``generate`` does: the processors,
    then :func:`warpers`, then ``multinomial`` over the softmax (the global RNG: seed it before)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, tokens] with at least one token, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B, T = input_ids.shape
    dev = input_ids.device
    past = cache.get_seq_length()
    if not 0 <= past < T:
        raise ValueError(f"the cache holds {past} positions; the prompt has {T}")
    end = T + max_new_tokens
    ids = torch.empty((B, end), dtype=input_ids.dtype, device=dev)
    ids[:, :T] = input_ids
    mask = torch.ones((B, end), dtype=torch.long, device=dev)
    kw = {cache_kw: cache, "use_cache": True}
    if _takes_logits_to_keep(model):
        kw["logits_to_keep"] = 1
    stops = torch.tensor(list(stop_ids or []), dtype=ids.dtype, device=dev)
    unfinished = torch.ones(B, dtype=ids.dtype, device=dev) if stops.numel() else None
    chain = list(processors) + (warpers(*sample) if sample is not None else [])
    # a processor may write into its scores (the model's logits then need a copy) unless it says it
    # does not (``writes_scores = False``, e.g. the engine's step clock)
    copy_scores = any(getattr(p, "writes_scores", True) for p in chain)
    step_in, cur = input_ids[:, past:], T
    while True:
        out = model(input_ids=step_in, attention_mask=mask[:, :cur], **kw)
        last = out.logits[:, -1]  # processors may write into scores: a copy then; argmax alone reads them in place
        scores = last.to(copy=True, dtype=torch.float32) if copy_scores else last.to(torch.float32)
        del out, last
        for p in chain:
            scores = p(ids[:, :cur], scores)
        if sample is not None:
            nxt = torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            nxt = argmax_last(scores)
        if unfinished is not None:
            nxt = nxt * unfinished + pad_id * (1 - unfinished)
        ids[:, cur] = nxt
        cur += 1
        if cur >= end:
            break
        if unfinished is not None:
            unfinished = unfinished & ~torch.isin(nxt, stops)
            if not bool(unfinished.any()):
                break
        step_in = ids[:, cur - 1:cur]
    return ids[:, :cur]
