"""``tda data``: the evaluation sets (name, kind, items, tokens, source, licence, default)."""

from __future__ import annotations

import json

import typer

from tda.cli.app import app

TOKEN_COUNTS = "evalset-tokens.json"  # {set sha256: Gemma 3 token count}: shipped in data/, cached per machine


def gemma_tokenizer():
    """The embedded Gemma 3 tokenizer, without converting the model: the converted cache's when there is
    one (~1 s), else the one indexed from the package's GGUF (:mod:`tda.models.gguf_index`, seconds the
    first time; no weights de-quantised)."""
    from tda.models.embedded import cache_is_valid, embedded_cache_path, load_tokenizer

    if cache_is_valid():
        return load_tokenizer(embedded_cache_path())
    from tda.models import embedded_gguf, gguf_index

    return load_tokenizer(gguf_index.index(embedded_gguf.gguf_file(embedded_gguf.ensure_gguf_cache()))[1])


def _known_counts() -> dict[str, int]:
    """Token counts by set hash: the shipped ones (``data/``), then this machine's (the cache)."""
    from tda.common.paths import DATA_DIR, cache_dir

    counts: dict[str, int] = {}
    for path in (DATA_DIR / TOKEN_COUNTS, cache_dir() / TOKEN_COUNTS):
        try:
            counts.update({str(k): int(v) for k, v in json.loads(path.read_text()).items()})
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    return counts


def _remember_counts(new: dict[str, int]) -> None:
    from tda.common.atomic import write_text_atomic
    from tda.common.paths import cache_dir

    path = cache_dir() / TOKEN_COUNTS
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    write_text_atomic(path, json.dumps({**(old if isinstance(old, dict) else {}), **new}, indent=1))


def describe_sets(tokenizer=None, *, count_tokens: bool = False) -> list[dict]:
    """One object per set of :func:`tda.common.evalsets.catalogue`: ``{name, kind, items, tokens,
    words, source, license, default, description, sha256}`` (tokens: Gemma tokenizer, no special
    tokens; None when neither ``tokenizer`` nor ``count_tokens``).

    With ``count_tokens``, counts come from the shipped/cached counts of the same text (by its SHA-256),
    and only the sets without one are tokenized (the tokenizer is then loaded without the model, and
    the new counts are cached)."""
    from tda.common.evalsets import catalogue, digest

    known = _known_counts() if count_tokens and tokenizer is None else {}
    out, new = [], {}
    for s in catalogue().values():
        rows = s.load()
        texts = s.texts()
        sha = digest(texts)
        tokens = known.get(sha)
        if tokens is None and (tokenizer is not None or count_tokens):
            if tokenizer is None:
                tokenizer = gemma_tokenizer()
            tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids)
            new[sha] = tokens
        out.append({"name": s.name, "kind": s.kind, "items": len(rows), "tokens": tokens,
                    "words": sum(len(t.split()) for t in texts), "source": s.source, "license": s.license,
                    "default": s.default, "description": s.description, "sha256": sha})
    if new and count_tokens:
        _remember_counts(new)
    return out


@app.command("data")
def data_cmd(
    as_json: bool = typer.Option(False, "--json", help="print the sets as a JSON list of objects"),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="count tokens with the Gemma 3 tokenizer"),
) -> None:
    """The evaluation sets `tda eval --set` and `tda frontier --set` can use: items, tokens, source, licence."""
    sets = describe_sets(count_tokens=tokens)
    if as_json:
        print(json.dumps(sets, indent=1))
        return
    for s in sets:
        tok = "" if s["tokens"] is None else f", {s['tokens']} tokens"
        print(f"{s['name']}{' (default)' if s['default'] else ''}: {s['kind']}, {s['items']} items{tok}, "
              f"{s['words']} words — {s['description']}\n    source: {s['source']}\n    license: {s['license']}")
