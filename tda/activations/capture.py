"""Activation capture: each token's FFN activation ``a`` (TransformerLens ``blocks.{L}.mlp.hook_post``).

Modes
- ``sequence``: the prompt as one sequence (BOS prepended when the tokenizer adds one);
- ``isolated``: every token of the prompt run on its own, as ``[BOS, token]`` when the model
  uses a BOS (else ``[token]``), so it sees no preceding context; all tokens go in one batch;
- ``batch``: many texts at once with right padding; pad positions are dropped from results.

The BOS position itself is *not* part of the results by default (``include_bos=False``): it
conditions every token but is no token of the prompt, and its activations are outliers. So the
rows of a sequence and an isolated capture of one prompt are the same tokens.

Two backends give the same numbers: ``hooks`` (a forward pre-hook on each layer's down
projection; stops the forward after the last requested layer) and ``tl`` (TransformerLens
``TransformerBridge.run_with_cache`` with a ``names_filter``, so only requested hooks are cached).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tda.common.atomic import atomic_path, check_output_dir
from tda.common.errors import BadInput
from tda.models.load import LoadedModel

MODES = ("sequence", "isolated", "batch")
BACKENDS = ("hooks", "tl")
FORMAT_VERSION = 1


def hook_name(layer: int) -> str:
    """TransformerLens' name for the FFN activation of ``layer``."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass
class Capture:
    """FFN activations of one text: ``acts[layer, token, neuron]`` (float32, CPU).

    ``layers[i]`` is the model layer of ``acts[i]``; ``token_ids``/``tokens`` label the token axis.
    """

    acts: torch.Tensor
    layers: list[int]
    token_ids: list[int]
    tokens: list[str]
    model_id: str
    mode: str
    text: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.acts.dim() != 3 or self.acts.shape[0] != len(self.layers) or self.acts.shape[1] != len(self.token_ids):
            raise ValueError("Capture: acts must be [layer, token, neuron] matching layers and token_ids")

    @property
    def n_tokens(self) -> int:
        return self.acts.shape[1]

    @property
    def d_ff(self) -> int:
        return self.acts.shape[2]

    def layer(self, layer: int) -> torch.Tensor:
        """``acts[token, neuron]`` of model layer ``layer``."""
        if layer not in self.layers:
            raise BadInput(f"layer {layer} is not in this capture (layers {self.layers})")
        return self.acts[self.layers.index(layer)]

    def metadata(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "model_id": self.model_id,
            "mode": self.mode,
            "layers": self.layers,
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "text": self.text,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors with the metadata as JSON in its header), atomically."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"acts": self.acts.contiguous()}, str(tmp), metadata={"tda": json.dumps(self.metadata())})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Capture:
        """Read a file written by :meth:`save`; a missing or corrupt file raises BadInput."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise BadInput(f"capture file {p} does not exist")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["tda"])
                acts = f.get_tensor("acts")
            return cls(
                acts=acts, layers=list(meta["layers"]), token_ids=list(meta["token_ids"]),
                tokens=list(meta["tokens"]), model_id=meta["model_id"], mode=meta["mode"],
                text=meta.get("text", ""), meta=meta.get("meta", {}),
            )
        except Exception as e:  # safetensors raises several types for a damaged file
            raise BadInput(f"{p} is not a valid tda capture file ({type(e).__name__})") from None


# ----- input checks ------------------------------------------------------------------------------
def resolve_layers(lm: LoadedModel, layers: Iterable[int] | str | None) -> list[int]:
    """All layers when None; accepts ``[0, 3]`` or ``"0,3,17"``; negative indices count from the end
    (``-1`` is the last layer), as in Python."""
    n = lm.ffn.n_layers
    if layers is None or layers == "" or layers == "all":
        return list(range(n))
    if isinstance(layers, str):
        try:
            layers = [int(x) for x in layers.replace(" ", "").split(",") if x]
        except ValueError:
            raise BadInput(f"layers must be comma-separated integers, got '{layers}'") from None
    out = []
    for L in layers:
        L = int(L)
        if not -n <= L < n:
            raise BadInput(f"layer {L} out of range: the model has layers 0..{n - 1} "
                           f"(negative indices count from the end)")
        out.append(L % n)
    if not out:
        raise BadInput("no layers given")
    return sorted(set(out))


def has_bos(lm: LoadedModel) -> bool:
    tok = lm.tokenizer
    if tok.bos_token_id is None:
        return False
    ids = tok("a", add_special_tokens=True).input_ids
    return bool(ids) and ids[0] == tok.bos_token_id


def tokenize(lm: LoadedModel, text: str, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of ``text`` with the model's special tokens; validates emptiness and length."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput("the prompt is empty")
    ids = lm.tokenizer(text, add_special_tokens=True).input_ids
    limit = min(max_tokens or lm.n_ctx, lm.n_ctx)
    if len(ids) > limit:
        raise BadInput(f"the prompt has {len(ids)} tokens; the limit is {limit}")
    return list(ids)


# ----- the two backends --------------------------------------------------------------------------
class _Stop(Exception):
    """Raised inside a hook to end a forward pass after the last layer we need."""


_ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar("tda_capture", default=None)


@contextlib.contextmanager
def activation_hooks(lm: LoadedModel, layers: list[int], record) -> Iterator[None]:
    """Within the block, forwards *of this context* call ``record(layer, a)`` for each layer.

    ``a`` is the input of the layer's down projection (TransformerLens ``hook_post``), as the
    model computed it. Pre-hooks are registered for the block only and record in the calling
    context alone (a ContextVar), so a concurrent forward in another thread using the same model
    is neither recorded nor disturbed. ``record`` may raise to end a forward early.
    """
    token = object()

    def make(L):
        def pre_hook(module, args):
            if _ACTIVE.get() is token:
                record(L, args[0].detach())
        return pre_hook

    handles = [lm.ffn.out_module(L).register_forward_pre_hook(make(L)) for L in layers]
    reset = _ACTIVE.set(token)
    try:
        yield
    finally:
        _ACTIVE.reset(reset)
        for h in handles:
            h.remove()


def _forward_hooks(lm: LoadedModel, input_ids, attention_mask, layers: list[int]) -> dict[int, torch.Tensor]:
    """``{layer: a[batch, pos, d_ff]}`` through :func:`activation_hooks`; stops after the last layer."""
    store: dict[int, torch.Tensor] = {}
    last = max(layers)

    def record(L, a):
        store[L] = a
        if L == last:
            raise _Stop

    try:
        with activation_hooks(lm, layers, record), torch.inference_mode():
            lm.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    return store


def _forward_tl(lm: LoadedModel, input_ids, attention_mask, layers: list[int]) -> dict[int, torch.Tensor]:
    bridge = lm.bridge()
    names = {hook_name(L): L for L in layers}
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(
            input_ids, attention_mask=attention_mask, names_filter=lambda n: n in names,
            stop_at_layer=max(layers) + 1,
        )
    return {L: cache[n] for n, L in names.items()}


def _forward(lm, input_ids, attention_mask, layers, backend) -> dict[int, torch.Tensor]:
    if backend not in BACKENDS:
        raise BadInput(f"unknown capture backend '{backend}'; use one of {', '.join(BACKENDS)}")
    input_ids = input_ids.to(lm.device)
    attention_mask = attention_mask.to(lm.device)
    fn = _forward_tl if backend == "tl" else _forward_hooks
    store = fn(lm, input_ids, attention_mask, layers)
    # Some layers (OPT) flatten [batch, pos] before the FFN: restore the token axes.
    return {L: a.reshape(*input_ids.shape, a.shape[-1]) for L, a in store.items()}


def _stack(store: dict[int, torch.Tensor], layers: list[int], rows, cols) -> torch.Tensor:
    """``acts[layer, token, neuron]`` float32 CPU from ``{layer: [batch, pos, d_ff]}``."""
    return torch.stack([store[L][rows, cols].float().cpu() for L in layers])


# ----- chunked hook capture (long prompts within the memory budget) ----------------------------------
def _sequence_hooks(lm: LoadedModel, ids: list[int], layers: list[int], start: int, chunk: int) -> torch.Tensor:
    """``acts[layer, token, neuron]`` of ``ids[start:]`` run as one sequence, ``chunk`` tokens per forward.

    Chunks after the first attend to the earlier ones through the KV cache (exact for causal
    attention); each chunk's activations are written straight into the float32 result, so the
    peak is the result plus one chunk's working set. A prompt of at most ``chunk`` tokens runs in
    one forward without a cache.
    """
    T, d_ff = len(ids), lm.ffn.d_ff
    out = torch.empty(len(layers), T - start, d_ff, dtype=torch.float32)
    index = {L: i for i, L in enumerate(layers)}
    last = max(layers)
    offset = [0]

    def record(L, a):
        a = a.reshape(-1, a.shape[-1])  # [positions, d_ff] (batch 1; OPT flattens)
        s, n = offset[0], a.shape[0]
        lo = max(s, start)
        if lo < s + n:
            out[index[L], lo - start: s + n - start] = a[lo - s:].float().cpu()
        if L == last:
            raise _Stop

    with activation_hooks(lm, layers, record), torch.inference_mode():
        x = torch.tensor([ids], device=lm.device)
        forward_chunks(lm, x, chunk, on_chunk=lambda s, e: offset.__setitem__(0, s), stop=_Stop)
    return out


def forward_chunks(lm: LoadedModel, input_ids: torch.Tensor, chunk: int, *, attention_mask=None, cache=None,
                   on_chunk=None, stop: type[BaseException] | tuple = ()):
    """Run ``input_ids[B, T]`` through the base model (no lm_head) ``chunk`` positions per forward.

    Chunks after the first attend to the earlier ones through the KV cache (exact for causal
    attention), so one forward's attention scores shrink from ``T × T`` to ``chunk × T``. A
    sequence of at most ``chunk`` tokens with no ``cache`` runs in one forward without a cache.
    ``on_chunk(s, e)`` is called before the forward of positions ``[s, e)``; an exception of type
    ``stop`` ends that chunk's forward early (capture stops after its last layer). Returns the
    cache (None when none was used). Capture and generation's prefill share it.
    """
    B, T = input_ids.shape
    if cache is None and chunk < T:
        cache = lm.new_cache()
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        if on_chunk is not None:
            on_chunk(s, e)
        mask = (attention_mask[:, :e] if attention_mask is not None
                else torch.ones((B, e), dtype=torch.long, device=input_ids.device))
        kw = {"use_cache": False} if cache is None else {"use_cache": True, **lm.cache_kw(cache)}
        try:
            lm.model.base_model(input_ids=input_ids[:, s:e], attention_mask=mask, **kw)
        except stop:
            pass
    return cache


def _isolated_hooks(lm: LoadedModel, rows: list[list[int]], layers: list[int], pos: int, batch: int) -> torch.Tensor:
    """``acts[layer, row, neuron]`` at position ``pos`` of each row (``[BOS, token]`` or ``[token]``),
    ``batch`` rows per forward."""
    out = torch.empty(len(layers), len(rows), lm.ffn.d_ff, dtype=torch.float32)
    index = {L: i for i, L in enumerate(layers)}
    last = max(layers)
    offset = [0, 0]

    def record(L, a):
        r0, n = offset
        out[index[L], r0: r0 + n] = a.reshape(n, -1, a.shape[-1])[:, pos].float().cpu()
        if L == last:
            raise _Stop

    dev = lm.device
    with activation_hooks(lm, layers, record), torch.inference_mode():
        for r0 in range(0, len(rows), batch):
            x = torch.tensor(rows[r0: r0 + batch], device=dev)
            offset[:] = [r0, x.shape[0]]
            try:
                lm.model.base_model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
            except _Stop:
                pass
    return out


# ----- public API --------------------------------------------------------------------------------
def capture(lm: LoadedModel, text: str, layers=None, mode: str = "sequence", *, backend: str = "hooks",
            include_bos: bool = False, max_tokens: int | None = None, chunk: int | None = None) -> Capture:
    """Capture ``acts[layer, token, neuron]`` for one text in ``sequence`` or ``isolated`` mode.

    Long prompts run in chunks of tokens (rows, for ``isolated``) chosen to stay within the memory
    budget (:mod:`tda.activations.budget`); a prompt that cannot fit is refused with one line
    before any forward. ``chunk`` forces a chunk size (tests, benchmarks).
    """
    from tda.activations.budget import capture_plan

    if mode not in ("sequence", "isolated"):
        raise BadInput(f"unknown capture mode '{mode}'; use sequence or isolated (or capture_batch)")
    if backend not in BACKENDS:
        raise BadInput(f"unknown capture backend '{backend}'; use one of {', '.join(BACKENDS)}")
    layers = resolve_layers(lm, layers)
    ids = tokenize(lm, text, max_tokens=max_tokens)
    bos = has_bos(lm)
    start = 1 if (bos and not include_bos) else 0
    keep = ids[start:]
    if not keep:
        raise BadInput("the prompt has no tokens besides BOS")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise BadInput(f"chunk must be a positive integer, got {chunk}")
    plan = capture_plan(lm, len(ids), len(keep), layers, mode=mode, backend=backend)
    size = chunk or plan.chunk
    if mode == "sequence":
        if backend == "hooks":
            acts = _sequence_hooks(lm, ids, layers, start, size)
        else:
            x = torch.tensor([ids])
            store = _forward(lm, x, torch.ones_like(x), layers, backend)
            acts = _stack(store, layers, 0, slice(start, None))
    else:
        rows, pos = ([[ids[0], t] for t in keep], 1) if bos else ([[t] for t in keep], 0)
        if backend == "hooks":
            acts = _isolated_hooks(lm, rows, layers, pos, size)
        else:
            x = torch.tensor(rows)
            store = _forward(lm, x, torch.ones_like(x), layers, backend)
            acts = _stack(store, layers, slice(None), pos)
    return Capture(
        acts=acts, layers=layers, token_ids=keep, tokens=lm.tokenizer.convert_ids_to_tokens(keep),
        model_id=lm.model_id, mode=mode, text=text,
        meta={"backend": backend, "bos_excluded": bool(bos and not include_bos), "d_ff": lm.ffn.d_ff,
              "dtype": str(lm.dtype).replace("torch.", "")},
    )


def iter_batch_captures(lm: LoadedModel, texts: Sequence[str], layers=None, *, batch_size: int = 8,
                        backend: str = "hooks", include_bos: bool = False,
                        max_tokens: int | None = None) -> Iterator[Capture]:
    """Capture many texts in padded batches, yielding one :class:`Capture` per text (mode ``batch``).

    Right padding with an attention mask; pad positions are excluded. Yields as it goes, so a
    long list never needs to be held in memory.
    """
    if isinstance(texts, str) or not texts:
        raise BadInput("give a non-empty list of texts")
    if batch_size < 1:
        raise BadInput("batch size must be at least 1")
    layers = resolve_layers(lm, layers)
    bos = has_bos(lm)
    start = 1 if (bos and not include_bos) else 0
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    from tda.activations.budget import check_batch

    all_ids = [tokenize(lm, t, max_tokens=max_tokens) for t in texts]
    for b in range(0, len(texts), batch_size):
        chunk = all_ids[b : b + batch_size]
        width = max(len(i) for i in chunk)
        check_batch(lm, len(chunk), width, len(layers))
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, ids in enumerate(chunk):
            x[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        store = _forward(lm, x, mask, layers, backend)
        for r, ids in enumerate(chunk):
            keep = ids[start:]
            yield Capture(
                acts=_stack(store, layers, r, slice(start, len(ids))), layers=layers, token_ids=keep,
                tokens=lm.tokenizer.convert_ids_to_tokens(keep), model_id=lm.model_id, mode="batch",
                text=texts[b + r],
                meta={"backend": backend, "bos_excluded": bool(bos and not include_bos), "d_ff": lm.ffn.d_ff,
                      "dtype": str(lm.dtype).replace("torch.", "")},
            )


def capture_batch(lm: LoadedModel, texts: Sequence[str], layers=None, **kw) -> list[Capture]:
    """All of :func:`iter_batch_captures` as a list (for short lists)."""
    return list(iter_batch_captures(lm, texts, layers, **kw))


def capture_to_dir(lm: LoadedModel, texts: Sequence[str], out_dir: str | Path, layers=None, *,
                   batch_size: int = 8, progress=None, **kw) -> Path:
    """Stream captures of many texts to ``out_dir``: ``00000.safetensors``... plus ``index.json``.

    Under a distributed launcher each process captures and writes its own share of the texts
    (whole batches, so every capture equals the one-process capture), and the main process writes
    the one ``index.json`` that :func:`load_dir` and ``tda info`` read as a single capture set;
    the folder is the same as a one-process run's. If any process fails, every process removes
    the files it wrote and no ``index.json`` is written.
    """
    from tda.common import distributed as dist
    from tda.common.atomic import write_text_atomic

    if isinstance(texts, str) or not texts:
        raise BadInput("give a non-empty list of texts")
    out = check_output_dir(out_dir)
    mine = dist.shard_range(len(texts), unit=batch_size)
    written: list[Path] = []

    def work() -> list[dict]:
        index = []
        if not len(mine):
            return index
        it = iter_batch_captures(lm, list(texts[mine.start:mine.stop]), layers, batch_size=batch_size, **kw)
        if progress is not None and dist.is_main():
            it = progress(it, total=len(mine))
        for j, cap in enumerate(it):
            name = f"{mine.start + j:05d}.safetensors"
            written.append(out / name)
            cap.save(out / name)
            index.append({"file": name, "n_tokens": cap.n_tokens, "text": cap.text[:80]})
        return index

    try:
        parts = dist.collect(work)  # every shard's entries, in text order
        index = [row for part in parts for row in part]
        manifest = json.dumps({"model_id": lm.model_id, "captures": index}, indent=1)
        dist.on_main(lambda: write_text_atomic(out / "index.json", manifest))
    except BaseException:
        for f in written:  # no partial capture set
            f.unlink(missing_ok=True)
        raise
    return out


def read_index(out_dir: str | Path) -> dict:
    """The ``index.json`` (manifest) of a capture folder written by :func:`capture_to_dir`."""
    d = Path(out_dir)
    try:
        index = json.loads((d / "index.json").read_text())
        if not isinstance(index.get("captures"), list):
            raise ValueError
        return index
    except (OSError, ValueError, AttributeError):
        raise BadInput(f"{d} is not a capture folder (no readable index.json)") from None


def load_dir(out_dir: str | Path) -> Iterator[Capture]:
    """Iterate the captures written by :func:`capture_to_dir` (in text order)."""
    d = Path(out_dir)
    for row in read_index(d)["captures"]:
        yield Capture.load(d / row["file"])


def active_fraction(cap: Capture, eps: float = 1e-2) -> list[float]:
    """Per layer, the fraction of ``|a| > eps`` over all tokens and neurons."""
    return [float((cap.acts[i].abs() > eps).float().mean()) for i in range(len(cap.layers))]
