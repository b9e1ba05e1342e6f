"""A faithful Expie exchange simulator: matching engine, REST, WebSocket, fault injection.

It stands in for the real exchange in the demo, the tests and the benchmarks. It imports only the
protocol pieces of ``gateway.core`` (number rendering, JSON-RPC frames, depth views), never the
gateway's services.
"""
