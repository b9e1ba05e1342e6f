"""The only code that talks to Expie: REST (``rest``) and the WebSocket feeds (``feed``)."""
