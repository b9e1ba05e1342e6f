"""Expie Gateway: an authenticated REST + WebSocket proxy in front of the Expie exchange API."""

__version__ = "0.1.0"
