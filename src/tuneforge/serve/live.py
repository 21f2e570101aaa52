"""Serving a registry alias (`tuneforge serve registry:production`) and following it: promote or rollback, no restart.

A watcher thread polls the registry for the version the alias names. When it moves, the new
version loads in that thread while the old one keeps serving; then a new engine starts and the
server's `state.served` and `state.engine` are swapped together on the event loop's thread. Route
handlers read both in one synchronous step (no `await` between), so a request sees either the old
pair or the new one, never a mix: its prompt is tokenized by the tokenizer of the model that
generates it, and it keeps the engine it was submitted to until it finishes. The old engine then
drains (requests already accepted finish on the old version), shuts down, and its weights are freed.

The drain happens in the watcher thread, so at most two versions are in memory at once; a promote
that arrives while the previous version still drains is picked up when the drain ends. A version
that fails to load is logged with the reason and the old one keeps serving; the watcher tries it
again only after the alias has moved elsewhere and back. Polling (a one-row SELECT every couple of
seconds on the WAL-mode registry) is simpler than any notification channel and works wherever the
registry file is readable, including from other processes (`tuneforge models promote`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from tuneforge.errors import ConfigError, ModelError, TuneforgeError
from tuneforge.registry.store import (
    ALIASES, RegistryError, Version, aliases, list_versions, open_registry, registry_path, resolve,
)
from tuneforge.serve.engine import EngineStats
from tuneforge.serve.engines.api import GenerationEngine
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served, load_served
from tuneforge.serve.threads import serial

log = logging.getLogger("tuneforge.serve")
REGISTRY_PREFIX = "registry:"
DEFAULT_POLL_S = 2.0


@dataclass(frozen=True)
class RegistryTarget:
    """What `tuneforge serve registry:NAME` serves: an alias (followed) or a fixed version id."""

    registry: Path
    name: str  # the alias or version id after "registry:"
    served_name: str  # the model's name in the API: the alias, so clients keep one name across versions
    poll_s: float = DEFAULT_POLL_S

    @property
    def follows(self) -> bool:
        """A version id never changes what it names; only an alias is worth watching."""
        return not is_version_id(self.name)


def is_version_id(name: str) -> bool:
    return name.startswith("v") and name[1:].isdigit()


def registry_name(reference: str) -> str | None:
    """ALIAS_OR_VERSION of a `registry:ALIAS_OR_VERSION` reference; None for any other model reference."""
    return reference[len(REGISTRY_PREFIX):].strip() if reference.startswith(REGISTRY_PREFIX) else None


def target_from(reference: str, registry: Path | None, served_name: str | None,
                poll_s: float | None = None) -> RegistryTarget | None:
    """The registry target a `tuneforge serve` reference names, or None when it names a model directly."""
    name = registry_name(reference)
    if name is None:
        return None
    if not name:
        raise RegistryError(f"{reference!r}: name an alias or a version after 'registry:', e.g. registry:production")
    poll_s = DEFAULT_POLL_S if poll_s is None else poll_s
    if poll_s <= 0:
        raise ConfigError(f"--registry-poll must be positive, got {poll_s:g}")
    return RegistryTarget(registry_path(registry), name, served_name or name, poll_s)


def resolve_target(target: RegistryTarget) -> Version:
    """The version the target names now; an unknown name is an error that lists what the registry has."""
    conn = open_registry(target.registry, create=False)
    try:
        try:
            return resolve(conn, target.name)
        except RegistryError:
            pass
        named = ", ".join(f"{alias} -> {version}" for alias, version in aliases(conn).items()) or "none set"
        versions = ", ".join(v.id for v in list_versions(conn)) or "none registered"
        promote = f"; promote one with `tuneforge models promote VERSION --to {target.name}`"
        hint = promote if target.name in ALIASES else ""
        raise RegistryError(f"registry:{target.name}: {target.registry} has no alias or version {target.name!r} "
                            f"(aliases: {named}; versions: {versions}){hint}")
    finally:
        conn.close()


def load_version(version: Version, target: RegistryTarget) -> Served:
    """Load a registered version (its run or model directory) under the target's API name."""
    if not Path(version.path).exists():  # never fall through to a hub download for a vanished directory
        raise ModelError(f"version {version.id}: {version.path}: no such file or directory")
    served = load_served(version.path, name=target.served_name)
    served.version = version.id
    return served


def load_target(target: RegistryTarget, adapters: list[tuple[str, str]] = ()) -> Served:
    """The version a `registry:` reference names at startup, loaded (an unknown name stops the server here)."""
    if adapters:
        raise ConfigError(f"--adapter cannot be combined with registry:{target.name}: the next version it names may "
                          "have another base model")
    return load_version(resolve_target(target), target)


def new_engine(served: Served, options: ServeOptions) -> GenerationEngine:
    """The engine `options.engine` names, for `served` (serve/engines/select.py)."""
    from tuneforge.serve.engines.select import build_engine

    return build_engine(served, options)


class EngineTotals:
    """What /metrics reads about generation when the engine can change under it.

    Gauges (queue depth, running sequences) add up the engines still running: the current one and
    one draining after a swap. Counters (decode steps, tokens) add up every engine the server has
    run, so they never go down at a swap, as Prometheus counters must not.
    """

    def __init__(self, engine: GenerationEngine):
        self._lock = threading.Lock()
        self._engines = [engine]
        self._finished = EngineStats()

    def add(self, engine: GenerationEngine) -> None:
        with self._lock:
            self._engines.append(engine)

    def retire(self, engine: GenerationEngine) -> None:
        """Fold a shut-down engine's counters into the totals and let go of it (and its model)."""
        with self._lock:
            self._engines.remove(engine)
            self._finished = summed([self._finished, engine.stats])

    def _running(self) -> list[GenerationEngine]:
        with self._lock:
            return list(self._engines)

    @property
    def queue_depth(self) -> int:
        return sum(engine.queue_depth for engine in self._running())

    @property
    def running(self) -> int:
        return sum(engine.running for engine in self._running())

    @property
    def stats(self) -> EngineStats:
        with self._lock:
            return summed([self._finished, *(engine.stats for engine in self._engines)])


def summed(stats: list[EngineStats]) -> EngineStats:
    return EngineStats(*(sum(getattr(s, f.name) for s in stats) for f in fields(EngineStats)))


class AliasWatcher:
    """The thread that follows an alias: poll, load, swap, drain. `state` is the app's ServerState."""

    def __init__(self, target: RegistryTarget, state, engines: EngineTotals, loop: asyncio.AbstractEventLoop):
        self.target, self.state, self.engines, self.loop = target, state, engines, loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneforge-registry-watcher", daemon=True)

    def start(self) -> AliasWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """No more polls; waits for a load or drain in progress. True when the thread ended within `timeout`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failed: str | None = None  # a version that would not load: tried again only after the alias moves
        problem: str | None = None  # the last registry error, so a broken registry is logged once, not every poll
        while not self._stop.wait(self.target.poll_s):
            try:
                conn = conn or open_registry(self.target.registry, create=False)
                version = resolve(conn, self.target.name)
            except (TuneforgeError, sqlite3.Error) as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    log.warning("registry:%s: %s; still serving %s", self.target.name, exc, self.state.served.version)
                continue
            problem = None
            if version.id == self.state.served.version:
                failed = None
            elif version.id != failed:
                try:
                    self._follow(version)
                except Exception as exc:  # a broken directory, a model the engine refuses, out of memory ...
                    failed = version.id
                    log.error("registry:%s now names %s (%s), which cannot be served: %s: %s; still serving %s",
                              self.target.name, version.id, version.path, type(exc).__name__, exc,
                              self.state.served.version)
        if conn is not None:
            conn.close()

    def _follow(self, version: Version) -> None:
        if self.state.options.engine == "builtin":
            serial()  # this thread loads; the new engine's thread takes the threads (serve/threads.py)
        old_version = self.state.served.version
        log.info("registry:%s moved from %s to %s; loading %s while %s keeps serving", self.target.name,
                 old_version, version.id, version.path, old_version)
        served = load_version(version, self.target)
        engine = new_engine(served, self.state.options)
        if self._stop.is_set():  # shutting down: never swap a new model in
            return
        engine.start()
        self.engines.add(engine)
        try:
            old = self._swap(served, engine)
        except BaseException:
            engine.shutdown(0)
            self.engines.retire(engine)
            raise
        del served, engine
        log.info("registry:%s: now serving %s; %s finishes the requests it holds", self.target.name, version.id,
                 old_version)
        drained = old[1].shutdown(self.state.options.request_timeout_s)
        self.engines.retire(old[1])
        del old
        gc.collect()  # the old weights go now, not at some later collection
        release_device_memory()
        if drained:
            log.info("registry:%s: %s drained and unloaded", self.target.name, old_version)
        else:
            log.warning("registry:%s: %s still generating after %g s; unloaded anyway", self.target.name, old_version,
                        self.state.options.request_timeout_s)

    def _swap(self, served: Served, engine: GenerationEngine) -> tuple[Served, GenerationEngine]:
        """Replace the served model and its engine together, on the event loop's thread (between two handler steps)."""
        state = self.state

        async def swap() -> tuple[Served, GenerationEngine]:
            old = state.served, state.engine
            state.served, state.engine = served, engine
            return old

        return asyncio.run_coroutine_threadsafe(swap(), self.loop).result()


def show_swaps_in_terminal() -> None:
    """Print the server's own log lines (loading, swapping, draining a version) at INFO, in uvicorn's format.

    Without a handler only warnings and errors would reach the terminal, and an operator could not
    see that a promote was picked up.
    """
    from uvicorn.logging import DefaultFormatter

    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
