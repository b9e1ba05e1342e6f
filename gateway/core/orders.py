"""Placing an order: the request body parsed, checked against the market's rules, normalized.

Owns the gateway's reading of ``POST /v1/markets/{market}/orders``: the submitted fields (form or
JSON body), the market rules taken from ``GET /v1/markets``, and the validated ``OrderRequest``
with its upstream form body, its audit parameters and its fingerprint (for idempotency). A bad
order becomes an ``InvalidOrder`` (400) naming the field, so it never reaches the exchange.

Pure: no aiohttp, no I/O, no clock. Numbers are ``Decimal`` from end to end; their text is parsed
and rendered by ``gateway.core.decimals`` only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from urllib.parse import parse_qsl, urlencode

from gateway.core.decimals import Style, parse_decimal, render
from gateway.errors import BadRequest

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
MAX_BODY_BYTES = 4096
MAX_SIGNIFICANT_DIGITS = 30
ACCEPTED_FIELDS = ("side", "amount", "price")

# Digits with at most one point: stricter than the engine's parser on purpose (no sign, exponent
# or spaces), so what we forward is exactly what the client evidently meant.
_PLAIN_DECIMAL = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")
# A JSON number such as 1e-999999999 is a dozen bytes but a billion digits in plain notation.
_MAX_JSON_EXPONENT = 60
_SHOWN_CHARS = 32


class Side(IntEnum):
    SELL = 1
    BUY = 2


@dataclass(frozen=True, slots=True)
class MarketRules:
    name: str
    stock_precision: int
    money_precision: int
    order_min_vol: Decimal
    market_order_min_money: Decimal
    market_order_enabled: bool
    enabled: bool


class InvalidOrder(BadRequest):
    """The order request is invalid; ``field`` names the culprit (or ``"body"``)."""

    code = "invalid_order"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, str]:
        return {"field": self.field}


@dataclass(frozen=True, slots=True)
class OrderRequest:
    market: str
    side: Side
    amount: Decimal
    price: Decimal | None  # None: a market order

    @property
    def is_market(self) -> bool:
        return self.price is None

    def form_body(self) -> bytes:
        """The body forwarded upstream (the reference's form encoding, canonical numbers)."""
        pairs = [("side", str(int(self.side))), ("amount", _canonical(self.amount))]
        if self.price is not None:
            pairs.append(("price", _canonical(self.price)))
        return urlencode(pairs).encode("ascii")

    def params(self) -> dict[str, str]:
        """Normalized parameters for the audit trail."""
        params = {"side": self.side.name.lower(), "type": "market" if self.is_market else "limit",
                  "amount": _canonical(self.amount)}
        if self.price is not None:
            params["price"] = _canonical(self.price)
        return params

    def fingerprint(self) -> str:
        """SHA-256 hex of the order's meaning: equal for equal orders however they were written."""
        price = None if self.price is None else _canonical(self.price)
        canonical = json.dumps(
            {"market": self.market, "side": int(self.side), "amount": _canonical(self.amount),
             "price": price}, sort_keys=True, separators=(",", ":"))
        # Versioned, so a future change of the canonical form cannot collide with this one.
        return hashlib.sha256(b"expie-order/v1\n" + canonical.encode("utf-8")).hexdigest()


def _canonical(value: Decimal) -> str:
    """Plain notation, trailing zeros stripped: ``1.50`` -> ``1.5``, ``1E+1`` -> ``10``."""
    return render(value, Style.HISTORY)


# --- market rules ---------------------------------------------------------------------------


class _Malformed(ValueError):
    """One entry of the markets list cannot be read."""


def market_rules(markets_body: bytes) -> dict[str, MarketRules]:
    """Rules by market name from the body of ``GET /v1/markets`` (a JSON list).

    Malformed entries are skipped; a body that is not a JSON list gives ``{}``. A name listed
    twice keeps its last entry.
    """
    try:
        data: object = json.loads(markets_body, parse_float=Decimal)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, list):
        return {}
    rules: dict[str, MarketRules] = {}
    for entry in data:
        try:
            rule = _rules_from(entry)
        except _Malformed:
            continue
        rules[rule.name] = rule
    return rules


def _rules_from(entry: object) -> MarketRules:
    if not isinstance(entry, dict):
        raise _Malformed("not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _Malformed("name")
    return MarketRules(
        name=name,
        stock_precision=_precision(entry, "stock_precision"),
        money_precision=_precision(entry, "money_precision"),
        order_min_vol=_minimum(entry, "order_min_vol"),
        market_order_min_money=_minimum(entry, "market_order_min_money"),
        market_order_enabled=_flag(entry, "market_order_enabled"),
        enabled=_flag(entry, "enabled"),
    )


def _precision(entry: Mapping[str, object], key: str) -> int:
    value = entry.get(key)
    # bool is an int in Python; a precision of "true" is not one.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 30:
        raise _Malformed(key)
    return value


def _minimum(entry: Mapping[str, object], key: str) -> Decimal:
    value = entry.get(key)
    # The reference sends these as strings; accept a JSON number too (parsed exactly).
    if isinstance(value, str):
        parsed = parse_decimal(value)
    elif isinstance(value, Decimal | int) and not isinstance(value, bool):
        parsed = Decimal(value)
    else:
        parsed = None
    if parsed is None or parsed < 0:
        raise _Malformed(key)
    return parsed


def _flag(entry: Mapping[str, object], key: str) -> bool:
    value = entry.get(key)
    if not isinstance(value, bool):
        raise _Malformed(key)
    return value


# --- the request body -----------------------------------------------------------------------


def parse_order_fields(body: bytes, content_type: str | None) -> dict[str, str]:
    """The submitted fields of a form (also with no content type) or JSON body."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidOrder("body", f"body is larger than {MAX_BODY_BYTES} bytes")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in ("", FORM_CONTENT_TYPE, JSON_CONTENT_TYPE):
        raise InvalidOrder("body", f"body content type {media_type!r} is not supported; "
                                   f"send {FORM_CONTENT_TYPE} or {JSON_CONTENT_TYPE}")
    # Whatever charset is declared, the only meaningful characters are ASCII: read UTF-8.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidOrder("body", "body is not valid UTF-8") from exc
    if media_type == JSON_CONTENT_TYPE:
        return _json_fields(text)
    return _form_fields(text)


def _form_fields(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidOrder("body", "body has a percent-escape that is not UTF-8") from exc
    return _unique(pairs)


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    # A repeated field is ambiguous (frameworks disagree on first or last wins): refuse it.
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidOrder("body", f"body repeats the field {_shown(name)!r}")
        fields[name] = value
    return fields


def _json_fields(text: str) -> dict[str, str]:
    try:
        data: object = json.loads(text, parse_float=Decimal, parse_int=Decimal,
                                  parse_constant=_refuse_constant, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError) as exc:
        raise InvalidOrder("body", "body is not valid JSON") from exc
    if not isinstance(data, _Pairs):
        raise InvalidOrder("body", "body must be a JSON object of order fields")
    return _unique([(name, _json_value(name, value)) for name, value in data.pairs])


@dataclass(frozen=True, slots=True)
class _Pairs:
    """A JSON object as its pairs, in order: duplicates are kept for ``_unique`` to refuse."""

    pairs: list[tuple[str, object]]


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_value(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        if not -_MAX_JSON_EXPONENT <= value.adjusted() <= _MAX_JSON_EXPONENT:
            raise InvalidOrder(name, f"{_shown(name)} is out of range")
        return format(value, "f")  # exact: 0.1 stays 0.1, 1e1 becomes 10
    kind = {bool: "a boolean", type(None): "null", list: "an array"}.get(type(value), "an object")
    raise InvalidOrder(name, f"{_shown(name)} must be a string or a number, not {kind}")


# --- validation -----------------------------------------------------------------------------


def validate_order(market: str, fields: Mapping[str, str], rules: MarketRules) -> OrderRequest:
    """The order the fields describe on ``market``; ``InvalidOrder`` names the first bad field."""
    for name in fields:
        if name not in ACCEPTED_FIELDS:
            raise InvalidOrder(name, f"unknown field {_shown(name)!r}; "
                                     f"the accepted fields are {', '.join(ACCEPTED_FIELDS)}")
    if not rules.enabled:
        raise InvalidOrder("market", f"market {market} is disabled")
    side = _side(fields.get("side"))
    is_market = "price" not in fields
    amount = _amount(fields.get("amount"), side, is_market, market, rules)
    price = None if is_market else _number("price", fields["price"], rules.money_precision, market)
    if is_market and not rules.market_order_enabled:
        raise InvalidOrder("price", f"price is required: market orders are disabled on {market}")
    return OrderRequest(market=market, side=side, amount=amount, price=price)


def _side(text: str | None) -> Side:
    if text is None:
        raise InvalidOrder("side", "side is required: 1 = sell, 2 = buy")
    if text not in ("1", "2"):
        raise InvalidOrder("side", f"side must be 1 (sell) or 2 (buy), got {_shown(text)!r}")
    return Side(int(text))


def _amount(text: str | None, side: Side, is_market: bool, market: str,
            rules: MarketRules) -> Decimal:
    if text is None:
        raise InvalidOrder("amount", "amount is required")
    # The engine parses amount with the stock precision even for a market buy, where the amount
    # is money to spend (notes 4.3): so stock_precision applies to every amount.
    amount = _number("amount", text, rules.stock_precision, market)
    if is_market and side is Side.BUY:
        minimum, what = rules.market_order_min_money, "minimum spend of a market buy"
    else:
        minimum, what = rules.order_min_vol, "minimum amount"
    if amount < minimum:
        raise InvalidOrder("amount", f"amount {_shown(text)} is below the {what} on {market}, "
                                     f"{_canonical(minimum)}")
    return amount


def _number(field: str, text: str, precision: int, market: str) -> Decimal:
    """A plain positive decimal with at most ``precision`` decimal places, canonical."""
    value = parse_decimal(text) if _PLAIN_DECIMAL.fullmatch(text) else None
    if value is None:
        raise InvalidOrder(field, f"{field} must be a plain positive decimal such as 0.5 (digits "
                                  f"and one optional point; no sign, exponent or spaces), "
                                  f"got {_shown(text)!r}")
    if value <= 0:
        raise InvalidOrder(field, f"{field} must be positive, got {_shown(text)}")
    # Decimal places are counted on the value, not the text: "0.10000" at precision 4 is 0.1,
    # which the engine's truncation leaves intact, so it is accepted (and forwarded as "0.1").
    canonical = _canonical(value)
    integer, _, fraction = canonical.partition(".")
    digits = len((integer + fraction).lstrip("0"))
    if digits > MAX_SIGNIFICANT_DIGITS:
        raise InvalidOrder(field, f"{field} {_shown(text)} has {digits} significant digits; "
                                  f"at most {MAX_SIGNIFICANT_DIGITS} are accepted")
    if len(fraction) > precision:
        raise InvalidOrder(field, f"{field} {_shown(text)} has {len(fraction)} decimal places; "
                                  f"{market} allows {precision}")
    return Decimal(canonical)


def _shown(text: str) -> str:
    """Client text echoed in a message, cut short: the body may be 4 KiB of junk."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
