"""``tda data``: the evaluation sets (name, kind, items, tokens, source, licence, default)."""

from __future__ import annotations

import json

import typer

from tda.cli.app import app


def gemma_tokenizer():
    """The embedded Gemma 3 tokenizer (the token counts of ``tda data``; converted on first use)."""
    from tda.models.embedded import ensure_embedded_cache, load_tokenizer

    return load_tokenizer(ensure_embedded_cache())


def describe_sets(tokenizer=None) -> list[dict]:
    """One object per set of :func:`tda.common.evalsets.catalogue`: ``{name, kind, items, tokens,
    words, source, license, default, description, sha256}`` (tokens: Gemma tokenizer, no special
    tokens; None without a tokenizer)."""
    from tda.common.evalsets import catalogue, digest

    out = []
    for s in catalogue().values():
        rows = s.load()
        texts = s.texts()
        tokens = None
        if tokenizer is not None:
            tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids)
        out.append({"name": s.name, "kind": s.kind, "items": len(rows), "tokens": tokens,
                    "words": sum(len(t.split()) for t in texts), "source": s.source, "license": s.license,
                    "default": s.default, "description": s.description, "sha256": digest(texts)})
    return out


@app.command("data")
def data_cmd(
    as_json: bool = typer.Option(False, "--json", help="print the sets as a JSON list of objects"),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="count tokens with the Gemma 3 tokenizer"),
) -> None:
    """The evaluation sets `tda eval --set` and `tda frontier --set` can use: items, tokens, source, licence."""
    sets = describe_sets(gemma_tokenizer() if tokens else None)
    if as_json:
        print(json.dumps(sets, indent=1))
        return
    for s in sets:
        tok = "" if s["tokens"] is None else f", {s['tokens']} tokens"
        print(f"{s['name']}{' (default)' if s['default'] else ''}: {s['kind']}, {s['items']} items{tok}, "
              f"{s['words']} words — {s['description']}\n    source: {s['source']}\n    license: {s['license']}")
