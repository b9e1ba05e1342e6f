"""The simulator's WebSocket endpoint ``/ws``: Expie's accessws (JSON-RPC, polled channels).

``server`` owns connections and timers, ``session`` one connection's outbound side, ``methods``
the request dispatch, and ``depth`` / ``price`` / ``deals`` the shared subscriptions per channel.
"""
