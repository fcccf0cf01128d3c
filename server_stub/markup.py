"""A tiny HTML builder that escapes by construction.

Every string that is not already :class:`Safe` is escaped when it becomes a child or an
attribute value, so text that comes from users and nodes (job names, JDL, check
messages, tags, log lines) can only ever be shown as text. Only the builder itself makes
:class:`Safe` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from urllib.parse import urlencode


class Safe(str):
    """HTML that the builder produced (never wrap outside text in it)."""

    __slots__ = ()


def esc(value: object) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(escape(str(value), quote=True))


def join(children: Iterable[object]) -> Safe:
    out: list[str] = []
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, str | int | float):
            out.append(esc(child))
        else:
            out.append(join(child))  # type: ignore[arg-type]
    return Safe("".join(out))


_VOID = frozenset({"br", "hr", "input", "link", "meta", "img", "wbr"})


def el(tag: str, *children: object, **attrs: object) -> Safe:
    """``el("a", "text", href="/x", class_="c", aria_label="l")``; None/False attributes
    are left out, True ones are written bare."""
    parts = [tag]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        parts.append(name if value is True else f'{name}="{esc(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in _VOID:
        return Safe(opening)
    return Safe(f"{opening}{join(children)}</{tag}>")


def href(path: str, **query: object) -> str:
    """A same-site link: ``path`` (made by the caller from safe parts) plus a query."""
    pairs = [(k, str(v)) for k, v in query.items() if v not in (None, "")]
    return path + ("?" + urlencode(pairs) if pairs else "")
