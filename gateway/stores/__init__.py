"""State behind small protocols, each with a Redis and a memory implementation.

Every store here is a ``typing.Protocol`` with a ``Redis…`` implementation (shared state for many
replicas) and a ``Memory…`` implementation (the single-process embedded default), checked by one
contract test suite run against both. Stores translate ``redis.RedisError`` / ``OSError`` into
``gateway.errors.StoreUnavailable``; they never import aiohttp.web and never register themselves
at import time: ``gateway.app`` builds and wires them.
"""
