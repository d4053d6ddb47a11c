"""A griffe extension: render labelgrad's ``Example:`` docstring sections as doctest code.

labelgrad's docstrings use the Google style with a singular ``Example:`` heading. griffe reads
only ``Examples:`` (plural) as an examples section (``>>>`` lines become highlighted code); a
singular heading becomes an admonition whose doctest lines Markdown would mangle into block
quotes and link references. Renaming the heading at load time keeps the sources as they are.

The docstrings also use Sphinx roles (``:class:`~labelgrad.Targets```), which Markdown shows
verbatim; they become inline code (the last component where ``~`` asks for it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` on every loaded object."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role_to_code, text)
