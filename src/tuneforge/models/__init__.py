"""Resolve a model reference (local dir, hub id, GGUF file, embedded:NAME) and load it."""
