"""``tda methods``: the registered sparse methods, what each touches and what it calibrates."""

from __future__ import annotations

from tda.cli.app import app


@app.command("methods")
def methods_cmd() -> None:
    """List the sparse methods (registry of tda.engine.methods) and their combinations."""
    from tda.engine.methods.registry import get_method, method_names

    print(f"{'method':10} {'kind':7} {'gated':6} {'density':9} calibrates / what it does")
    for name in method_names():
        cls = get_method(name)
        need = "needed" if cls.needs_density else "optional"
        print(f"{name:10} {cls.kind:7} {'yes' if cls.gated_only else 'no':6} {need:9} "
              f"{cls.calibrates}; {cls.summary}")
    combos = [n for n in method_names(combos=True) if "+" in n]
    print("combinations (prompt-fixed slice at --density, TT inside it): " + ", ".join(combos))
    print("any method: --lm-head-density D also sparsifies the lm_head input (TEAL rule); in method "
          "lists write it as METHOD+headD, e.g. tt+head0.7")
