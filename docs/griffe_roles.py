"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

diffmem's docstrings name other objects with reStructuredText roles (``:func:`ddim```,
``:class:`~diffmem.dynamics.study.StudyConfig```). Markdown has no such roles, so mkdocstrings would
print them literally. This extension rewrites each role to a code span before the docstring is
parsed: ``:func:`ddim``` becomes ```ddim```, and a leading ``~`` keeps only the last component
(``:class:`~diffmem.dynamics.study.StudyConfig``` becomes ```StudyConfig```), as Sphinx shows it. A
line ending in reST's ``::`` (the indented block after it is code either way) ends in one colon.
Loaded by ``mkdocs.yml`` (``plugins → mkdocstrings → handlers → python → options → extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const|ref):`(~?)([^`]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)  # reST "text::" before a literal block


def _span(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def replace_roles(text: str) -> str:
    """``text`` with every Sphinx role written as a Markdown code span, and reST's ``text::`` (which
    introduces a literal block) written as ``text:``."""
    return LITERAL.sub(":", ROLE.sub(_span, text))


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = replace_roles(obj.docstring.value)
