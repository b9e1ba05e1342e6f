"""Expie number rendering and parsing (notes 4.7): the engine's and the history's dialects."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.core.decimals import Style, parse_decimal, render, render_raw, truncate


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.14900000", "0.149"),  # trailing zeros stripped
        ("2.0000", "2"),  # and the point with them
        ("100", "100"),  # integers keep their zeros
        ("0", "0"),
        ("0E-8", "0e-8"),  # zero at 8+ decimals is exponent form: never stripped
        ("0E-12", "0e-12"),
        ("0.00000010", "1.0e-7"),  # adjusted exponent < -6: exponent form, zero kept
        ("0.0000001", "1e-7"),
        ("0.00000060", "6.0e-7"),
        ("0.000001", "0.000001"),  # adjusted exponent -6 is still plain
        ("0.0000010", "0.000001"),
        ("1E+1", "1e+1"),  # positive exponent: exponent form, lowercase
        ("-0.50", "-0.5"),
        ("-0.000", "0"),
    ],
)
def test_engine_style(value: str, expected: str) -> None:
    assert render(Decimal(value), Style.ENGINE) == expected


def test_engine_style_is_the_default() -> None:
    assert render(Decimal("0E-8")) == "0e-8"
    assert render(Decimal("0.1500")) == "0.15"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0E-8", "0"),
        ("0E-16", "0"),
        ("0.00000010", "0.0000001"),
        ("0.00000060", "0.0000006"),
        ("1E+1", "10"),
        ("0.14900000", "0.149"),
        ("2.0000000000000000", "2"),
        ("-0.0003000000000000", "-0.0003"),
        ("-0E-8", "0"),
    ],
)
def test_history_style_is_fixed_point_stripped(value: str, expected: str) -> None:
    assert render(Decimal(value), Style.HISTORY) == expected


@pytest.mark.parametrize(
    ("value", "precision", "expected"),
    [
        ("0.149", 8, "0.14900000"),  # price.query: unstripped at the engine's money precision
        ("0.149999999", 8, "0.14999999"),  # truncated, never rounded up
        ("0.0000001", 8, "1.0e-7"),
        ("12", 4, "12.0000"),
        ("0", 8, "0"),  # no trade yet: the engine's plain zero
    ],
)
def test_render_raw(value: str, precision: int, expected: str) -> None:
    assert render_raw(Decimal(value), precision) == expected


@pytest.mark.parametrize(
    ("value", "precision", "expected"),
    [
        ("1.23456789", 4, "1.2345"),
        ("0.99999", 4, "0.9999"),
        ("-1.23456789", 4, "-1.2345"),  # toward zero, not floor
        ("0.00001", 4, "0.0000"),
        ("5", 2, "5.00"),
    ],
)
def test_truncate_rounds_toward_zero_and_fixes_the_exponent(
    value: str, precision: int, expected: str
) -> None:
    result = truncate(Decimal(value), precision)
    assert str(result) == expected
    assert result.as_tuple().exponent == -precision


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", "1"),
        ("0.15", "0.15"),
        ("-2.5", "-2.5"),
        ("+3", "3"),
        (".5", "0.5"),
        ("5.", "5"),
        ("1e-3", "0.001"),
        ("1E+2", "100"),
        (" 0.1 ", "0.1"),
    ],
)
def test_parse_decimal_accepts_decimal_strings(text: str, expected: str) -> None:
    parsed = parse_decimal(text)
    assert parsed is not None
    assert parsed == Decimal(expected)


@pytest.mark.parametrize(
    "text",
    [
        "", " ", "NaN", "nan", "sNaN", "-NaN", "inf", "Infinity", "-inf", "abc", "1.2.3", "0x10",
        "1,5", "1e", "e5", "--1", ".", "1 2",
        "1_000",  # Python's Decimal takes underscores, the engine does not
        "\u0661",  # ARABIC-INDIC DIGIT ONE: Python's Decimal reads it as 1
        "1e-9999999999999999999",  # beyond any exponent Decimal can hold
    ],
)
def test_parse_decimal_rejects_non_numbers(text: str) -> None:
    assert parse_decimal(text) is None
