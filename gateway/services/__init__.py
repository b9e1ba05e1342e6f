"""Use cases: async, no aiohttp.web. They orchestrate stores and the upstream client."""
