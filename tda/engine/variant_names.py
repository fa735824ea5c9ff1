"""Names of timed variants beyond a method's: ``METHOD+specK``, the method decoded with a speculative
lm_head of up to K drafts (:mod:`tda.engine.speculate`). Pure parsing, no torch: the report and the
frontier's verdicts read these names too."""

from __future__ import annotations

from tda.common.errors import BadInput


def split_speculate(method: str) -> tuple[str, int | None]:
    """``"tt+spec4"`` -> ``("tt", 4)`` (``+spec`` alone: k = 4); a method without it -> ``(method, None)``."""
    base, sep, k = method.partition("+spec")
    if not sep:
        return method, None
    if not base or (k and not k.isdigit()):
        raise BadInput(f"'{method}': write the speculative head as METHOD+specK (K in 1..4), e.g. dense+spec4")
    return base, int(k) if k else 4
