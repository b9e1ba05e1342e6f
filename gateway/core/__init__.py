"""Pure domain code: no aiohttp, no redis, no sockets, no clock.

Everything here is deterministic and testable as plain Python. The simulator reuses the protocol
pieces (number rendering, JSON-RPC frames, depth merging and diffs) so both sides of the wire
speak one dialect.
"""
