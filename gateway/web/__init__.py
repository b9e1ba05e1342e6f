"""The HTTP edge: route table, request guards, handlers that parse, call and render."""
