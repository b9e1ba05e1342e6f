"""WebSocket fan-out: one upstream subscription per market, many downstream subscribers."""
