"""The seam between tuneforge's HTTP layer and whatever generates: the GenerationEngine protocol.

Routes (completions.py) tokenize and check a request, then hand the engine `Request`s (prompt token
ids, sampling parameters, a thread-safe sink) and read `Delta`/`Done`/`Failed` events back; /health
and /metrics read a few gauges and counters; the app starts and drains it; the registry watcher
(live.py) swaps one engine for another. Everything else the server does (API keys, limits, the
request log, feedback, metrics, hot swap, the chat page) lives above this seam, so it is the same
whichever engine generates: the built-in batching engine (serve/engine.py), or llama.cpp's or vLLM's own
server in a child process (llamacpp.py, vllm.py; what they share is child_server.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tuneforge.errors import ConfigError
from tuneforge.serve.engine import EngineClosed, EngineStats, Failed, Request

ENGINES = ("builtin", "llama.cpp", "vllm")


@runtime_checkable
class GenerationEngine(Protocol):
    stats: EngineStats  # counters /metrics reads (live.EngineTotals sums them across swaps)

    def start(self) -> None:
        """Begin generating (the app's startup); may block until the engine is ready."""

    def submit(self, request: Request) -> None:
        """Queue a request; its events go to request.sink from any thread. Raises EngineClosed when draining,
        EngineUnavailable when the engine cannot take it now (answered 503)."""

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new requests, finish admitted ones; True when all finished within `timeout`."""

    @property
    def alive(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> int: ...


class EngineUnavailable(EngineClosed):
    """The engine cannot take requests for now (its process crashed and is restarting, or gave up): a 503 with this message."""


@dataclass(frozen=True)
class Unavailable(Failed):
    """A request lost because the engine went away under it (a crashed child process): answered 503, not 500."""


def missing_engine(engine: str, module: str, install: str) -> ConfigError:
    """The error for `--engine NAME` when its package is not installed: it says what to install."""
    return ConfigError(f"--engine {engine} needs {module}, which is not installed: {install}")
