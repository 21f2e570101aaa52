"""Generation engines behind serve's routes: the built-in one (serve/engine.py), llama.cpp, vLLM (see api.py)."""
