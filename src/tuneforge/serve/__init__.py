"""Serving: an OpenAI-compatible HTTP server over a batching generator (protocol, engine, routes, app)."""
