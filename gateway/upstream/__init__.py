"""The only code that talks to Expie: REST (``rest``) and, later, WebSocket feeds."""
