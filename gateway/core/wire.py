"""The one parser of each kind of value the edge takes from the wire (path, query, headers).

``str.isdigit`` is true for superscripts and other scripts' digits, and ``int`` takes thousands
of them: at the edge an integer is ASCII digits, a bounded number of them. Pure.
"""

from __future__ import annotations

from typing import Final

MAX_INT64: Final = 2**63 - 1  # order ids, Expie's int64 columns
MAX_PAGE_VALUE: Final = 10**9  # limit / offset / after: beyond any page anyone reads


def wire_integer(text: str, maximum: int = MAX_INT64) -> int | None:
    """``text`` as a non-negative integer up to ``maximum``, or None when it is not one."""
    if not 0 < len(text) <= len(str(maximum)) or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= maximum else None
