"""Rendered sections of the Markdown docs: text between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` is written by a renderer, never by hand (``tools/render_docs.py``)."""

from __future__ import annotations

import re
from typing import Callable, Mapping

_SECTION = re.compile(
    r"(<!-- BEGIN (?P<name>[\w:.-]+)[^>]*-->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.DOTALL)


def section_names(text: str) -> list[str]:
    """Names of the rendered sections in ``text``, in order."""
    return [m.group("name") for m in _SECTION.finditer(text)]


def section_bodies(text: str) -> dict[str, str]:
    """Rendered-section name -> its current body."""
    return {m.group("name"): m.group("body") for m in _SECTION.finditer(text)}


def render_sections(text: str, renderers: Mapping[str, Callable[[], str]], source: str = "") -> str:
    """``text`` with every section's body replaced by its renderer's output.

    A section with no renderer is an error naming it and ``source`` (the file)."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in renderers:
            raise KeyError(f"{source or 'text'}: rendered section {name!r} has no renderer; "
                           f"known: {sorted(renderers)}")
        body = renderers[name]().rstrip("\n") + "\n"
        return match.group(1) + body + match.group(4)

    return _SECTION.sub(replace, text)
