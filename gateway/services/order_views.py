"""A user's own orders out of an account shared by several users.

The exchange knows only accounts; the gateway knows which user placed which order (the ownership
store). For a user who is not desk-wide, the pending list is the account's whole pending list
(every page) filtered to the user's orders, with ``total``, ``limit`` and ``offset`` recomputed
for that user; the finished list is scanned newest first until the requested page is full (at
most ``scan_limit`` records; Expie's finished list has no total). Desk-wide callers get the
exchange's answer unchanged. Orders placed outside the gateway have no owner: only desk-wide
callers see them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

from gateway.auth.secret import Secret
from gateway.core.principal import Principal
from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.stores.ownership import OwnershipStore
from gateway.upstream.rest import UpstreamClient, UpstreamResponse

UPSTREAM_PAGE = 100
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_OWNER_BATCH = 500

Record = dict[str, object]


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int

    @classmethod
    def parse(cls, limit: str | None, offset: str | None) -> Page:
        """The caller's paging (already checked to be digits), within the exchange's bounds."""
        size = DEFAULT_LIMIT if limit is None else int(limit)
        if not 1 <= size <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", code="bad_query")
        return cls(size, 0 if offset is None else int(offset))


class _UpstreamFailed(Exception):
    def __init__(self, response: UpstreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class OrderViews:
    def __init__(
        self, upstream: UpstreamClient, ownership: OwnershipStore, scan_limit: int
    ) -> None:
        self._upstream = upstream
        self._ownership = ownership
        self._scan_limit = scan_limit

    async def pending(
        self, principal: Principal, token: Secret, market: str, page: Page
    ) -> UpstreamResponse:
        try:
            records = [r async for r in self._owned(principal, token, market, "_pending", None)]
        except _UpstreamFailed as failed:
            return failed.response
        body = {"records": records[page.offset:page.offset + page.limit], "total": len(records),
                "limit": page.limit, "offset": page.offset}
        return _json(body)

    async def finished(
        self, principal: Principal, token: Secret, market: str, page: Page
    ) -> UpstreamResponse:
        wanted = page.offset + page.limit
        records: list[Record] = []
        try:
            async for record in self._owned(principal, token, market, "_finished", wanted):
                records.append(record)
        except _UpstreamFailed as failed:
            return failed.response
        body = {"records": records[page.offset:wanted], "limit": page.limit, "offset": page.offset}
        return _json(body)

    async def account_pending(self, token: Secret, market: str) -> list[Record]:
        """Every pending order of the account in ``market`` (what a kill switch cancels)."""
        try:
            return [record async for record in self._pages(token, market, "_pending")]
        except _UpstreamFailed as failed:
            raise UpstreamUnavailable(f"the exchange refused the pending list of {market} "
                                      f"(status {failed.response.status})") from None

    async def account_finished_until(self, token: Secret, market: str,
                                     past: Callable[[Record], bool]) -> list[Record]:
        """The account's finished orders in ``market``, newest first, up to the first one that
        is ``past`` what the caller looks for (the ones after it are older still)."""
        found: list[Record] = []
        try:
            async for record in self._pages(token, market, "_finished"):
                if past(record):
                    break
                found.append(record)
        except _UpstreamFailed as failed:
            raise UpstreamUnavailable(f"the exchange refused the finished list of {market} "
                                      f"(status {failed.response.status})") from None
        return found

    async def order_has_deals(self, token: Secret, market: str, order_id: int) -> bool:
        """Whether any of the order's amount was traded (its deals, from the exchange)."""
        path = f"/v1/markets/{market}/orders/{order_id}?limit=1&offset=0"
        try:
            return bool(_records(await self._upstream.send("GET", path, token)))
        except _UpstreamFailed as failed:
            raise UpstreamUnavailable(f"the exchange refused the deals of order {order_id} "
                                      f"(status {failed.response.status})") from None

    async def owners(self, account: str, records: list[Record]) -> list[str | None]:
        owners: list[str | None] = []
        for start in range(0, len(records), _OWNER_BATCH):
            batch = records[start:start + _OWNER_BATCH]
            owners += await self._ownership.owners(account, [_id(r) for r in batch])
        return owners

    async def _owned(
        self, principal: Principal, token: Secret, market: str, listing: str, wanted: int | None
    ) -> AsyncIterator[Record]:
        """The caller's records of ``listing``, newest first, stopping once ``wanted`` are found."""
        found = 0
        batch: list[Record] = []
        async for record in self._pages(token, market, listing):
            batch.append(record)
            if len(batch) == UPSTREAM_PAGE:
                for mine in await self._mine(principal, batch):
                    yield mine
                    found += 1
                batch = []
                if wanted is not None and found >= wanted:
                    return
        for mine in await self._mine(principal, batch):
            yield mine

    async def _mine(self, principal: Principal, records: list[Record]) -> list[Record]:
        owners = await self.owners(principal.account, records)
        return [r for r, owner in zip(records, owners, strict=True) if owner == principal.user_id]

    async def _pages(self, token: Secret, market: str, listing: str) -> AsyncIterator[Record]:
        seen: set[object] = set()
        offset = 0
        while offset < self._scan_limit:
            path = f"/v1/markets/{market}/orders/{listing}?limit={UPSTREAM_PAGE}&offset={offset}"
            answer = await self._upstream.send("GET", path, token)
            records = _records(answer)
            for record in records:
                # Orders come and go between two pages: a record may show up twice.
                if record["id"] not in seen:
                    seen.add(record["id"])
                    yield record
            if len(records) < UPSTREAM_PAGE:
                return
            offset += len(records)


def _records(answer: UpstreamResponse) -> list[Record]:
    if answer.status != 200:
        raise _UpstreamFailed(answer)
    try:
        records = json.loads(answer.body)["records"]
    except (ValueError, KeyError, TypeError):
        raise UpstreamUnavailable("the exchange answered an unreadable order list") from None
    if not isinstance(records, list):
        raise UpstreamUnavailable("the exchange answered an unreadable order list")
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("id"), int)]


def _id(record: Record) -> int:
    return cast(int, record["id"])  # _records keeps only records with an integer id


def _json(body: object) -> UpstreamResponse:
    return UpstreamResponse(200, json.dumps(body).encode(), "application/json")

