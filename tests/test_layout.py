"""The package layout follows the pipeline: no import cycles, lower stages never import higher ones.

Every ``import`` counts — module level and inside functions — since a lazy import of a higher
stage is still a dependency on it. Edges are read from the source (``ast``), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tda", "analysis", "app")
# the pipeline, lowest first: a module may import its own stage and lower ones only
STAGES = ("tda.common", "tda.models", "tda.activations", "tda.masks", "tda.engine", "tda.evaluate",
          "analysis", "tda.cli", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts ``a.b.c`` when it is a module)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}".strip(".")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a package path: keep the known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    return {n: imports_of(p, n, known) for n, p in mods.items()}


def stage_of(name: str) -> int | None:
    best = None
    for i, s in enumerate(STAGES):
        if name == s or name.startswith(s + "."):
            best = i
    return best


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_stages_never_import_higher_ones():
    bad = []
    for mod, deps in graph().items():
        s = stage_of(mod)
        if mod == "tda" or s is None:  # the package root re-exports lazily from every stage
            continue
        for d in deps:
            sd = stage_of(d)
            if sd is not None and sd > s:
                bad.append(f"{mod} -> {d}")
    assert not bad, "a lower stage imports a higher one:\n" + "\n".join(sorted(bad))


def test_every_module_belongs_to_a_stage():
    loose = [m for m in all_modules() if m.startswith("tda.") and stage_of(m) is None
             and m not in ("tda.__main__",)]
    assert not loose, f"modules outside the stage folders: {loose}"


def test_few_modules_directly_in_tda():
    top = [p.name for p in (ROOT / "tda").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 6, top


@pytest.mark.parametrize("name", ["load_model", "LoadedModel", "capture", "Capture", "generate",
                                  "build_mask", "calibrate", "BadInput", "TDAError"])
def test_public_api_reexported(name):
    import tda

    assert callable(getattr(tda, name))
    assert name in tda.__all__
