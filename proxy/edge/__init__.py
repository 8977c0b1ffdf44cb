"""The HTTP edge: aiohttp server and relay, request canonicalisation, Ollama's front checks, access log."""
