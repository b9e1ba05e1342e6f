"""Expie number rendering and parsing: the one place that turns Decimals into wire strings.

Expie (a ViaBTC engine underneath) renders numbers as strings in two dialects:

- ``ENGINE``: the matching engine's text. Scientific-style conversion with a lowercase ``e``,
  then trailing zeros (and a trailing point) stripped *unless* the text is in exponent form.
  This is why real Expie output contains quirks such as ``"0e-8"`` or ``"1.0e-7"``.
- ``HISTORY``: values read back from the history database (fixed-point DECIMAL columns),
  stripped of trailing zeros; never in exponent form, zero is ``"0"``.

``RAW`` is the unstripped engine text at a given precision (``price.query`` uses it).

This module must not know about markets, orders or the network.
"""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation
from enum import Enum

# The engine's arithmetic: IEEE decimal128 (34 digits), rounding toward zero everywhere.
ENGINE_CONTEXT = Context(prec=34, rounding=ROUND_DOWN)

# The decimal-string syntax the engine's parser (libmpdec) accepts: ASCII digits only. Python's
# Decimal also takes underscores ("1_000") and non-ASCII digits, which Expie refuses.
_DECIMAL_SYNTAX = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class Style(Enum):
    ENGINE = "engine"
    HISTORY = "history"


def render(value: Decimal, style: Style = Style.ENGINE) -> str:
    """Render ``value`` as Expie puts it on the wire."""
    if style is Style.HISTORY:
        text = format(value, "f")
    else:
        text = str(value).lower()
        if "e" in text:
            return text
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        return "0"
    return text


def render_raw(value: Decimal, precision: int) -> str:
    """Unstripped engine text of ``value`` at ``precision`` decimals (``price.query``'s form).

    Zero is ``"0"``: a market that has not traded yet shows the engine's plain zero.
    """
    if value == 0:
        return "0"
    return str(truncate(value, precision)).lower()


def truncate(value: Decimal, precision: int) -> Decimal:
    """Round toward zero to ``precision`` decimals, as the engine does everywhere."""
    quantum = Decimal(1).scaleb(-precision)
    return value.quantize(quantum, rounding=ROUND_DOWN, context=ENGINE_CONTEXT)


def parse_decimal(text: str) -> Decimal | None:
    """Parse a finite decimal string; ``None`` when it is not one (NaN, inf, garbage)."""
    text = text.strip()
    if _DECIMAL_SYNTAX.fullmatch(text) is None:
        return None
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite():
        return None
    return value
