"""MkDocs hook: the docstrings use Sphinx roles (``:class:`~tda.x.Y```); show them as plain code.

mkdocstrings renders ``:class:`X``` as ``:class:<code>X</code>``; this drops the role and, for the
``~`` form, keeps the last dotted part, as Sphinx would.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|data|attr|obj|exc|const):<code>(~?)([^<]*)</code>")


def _sub(m: re.Match) -> str:
    tilde, target = m.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_sub, html)
