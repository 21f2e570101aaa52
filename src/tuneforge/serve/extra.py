"""Models served by name beside the main one, loaded on demand and kept in a small LRU (fine-tunes of the jobs API).

The server's main model (served.py) is loaded at start; an extra model is found by name in a
catalog (the platform's finished jobs, platform/jobs.py), loaded the first time a request names
it, and answers with its own engine. At most `capacity` stay loaded: loading one more unloads the
least recently used, whose engine first finishes the requests it holds (as a registry swap does,
live.py). Concurrent first requests for one model share a single load.

A catalog decides who may see a model (`owner`: the caller's key id, serve/auth.py); a model the
caller may not see is answered exactly as one that does not exist (404 model_not_found), even when
it is loaded for another caller. tests/serve/test_extra_models.py pins the loading, the LRU and the
visibility; tests/platform/test_openai_client.py the same through the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from tuneforge.serve import errors
from tuneforge.serve.engine import Engine
from tuneforge.serve.errors import ApiError
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.protocol import ModelCard
from tuneforge.serve.served import Served, load_served
from tuneforge.serve.threads import serial

log = logging.getLogger("tuneforge.serve")
DEFAULT_CAPACITY = 2


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the model's id in the API, e.g. ft:tiny::ftjob-abc
    path: str  # what load_served loads: a run directory
    created: int
    parent: str | None = None  # the base model it was tuned from


class ModelCatalog(Protocol):
    def find(self, name: str, owner: str | None) -> CatalogEntry | None:
        """The entry named `name` that `owner` may use (None: every caller may use every entry)."""

    def visible(self, owner: str | None) -> list[CatalogEntry]:
        """Every entry `owner` may use."""


def load_serially(path: str, name: str) -> Served:
    """A model loaded on a worker thread that keeps no OpenMP pool beside the engines' (serve/threads.py)."""
    serial()
    return load_served(path, name=name)


class ExtraModels:
    """The loaded extra models, least recently used first; every method runs on the event loop's thread."""

    def __init__(self, catalog: ModelCatalog, options: ServeOptions, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.catalog, self.options, self.capacity = catalog, options, capacity
        self.loaded: OrderedDict[str, tuple[Served, Engine]] = OrderedDict()
        self.loading: dict[str, asyncio.Task] = {}
        self.draining: set[asyncio.Task] = set()

    async def ensure(self, name: str | None, owner: str | None, main: Served) -> None:
        """Make `name` ready to answer (loading it if needed), unless the main model serves it; 404 if unknown to `owner`."""
        if name is None or name in main.names:
            return
        entry = self.catalog.find(name, owner)
        if entry is None:
            known = list(main.names) + [e.name for e in self.catalog.visible(owner)]
            raise errors.unknown_model(name, known)
        while name not in self.loaded:  # again if another load evicted it before this request resumed
            task = self.loading.get(name)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._load(entry))
                self.loading[name] = task
                task.add_done_callback(lambda _: self.loading.pop(name, None))
            await asyncio.shield(task)
        self.loaded.move_to_end(name)

    def get(self, name: str | None) -> tuple[Served, Engine] | None:
        return self.loaded.get(name) if name is not None else None

    def cards(self, owner: str | None) -> list[ModelCard]:
        return [ModelCard(id=e.name, created=e.created, root=e.path, parent=e.parent) for e in self.catalog.visible(owner)]

    async def _load(self, entry: CatalogEntry) -> None:
        log.info("loading %s from %s", entry.name, entry.path)
        try:
            served = await asyncio.to_thread(load_serially, entry.path, entry.name)
        except Exception as exc:  # a vanished run directory, a model the engine refuses, out of memory ...
            log.error("%s cannot be served: %s: %s", entry.name, type(exc).__name__, exc)
            raise ApiError(500, f"The model '{entry.name}' could not be loaded: {type(exc).__name__}: {exc}",
                           type="server_error", code="model_load_failed") from None
        engine = Engine(served.model, served.tokenizer, self.options.max_batch_size, self.options.batching,
                        self.options.threads)
        engine.start()
        self.loaded[entry.name] = (served, engine)
        while len(self.loaded) > self.capacity:
            old_name, (_, old_engine) = self.loaded.popitem(last=False)
            log.info("unloading %s (least recently used); it finishes the requests it holds", old_name)
            drain = asyncio.get_running_loop().create_task(
                asyncio.to_thread(old_engine.shutdown, self.options.request_timeout_s))
            self.draining.add(drain)
            drain.add_done_callback(self.draining.discard)

    async def close(self, timeout: float) -> None:
        """Finish what every loaded engine holds, then stop them (the server's shutdown)."""
        engines = [engine for _, engine in self.loaded.values()]
        self.loaded.clear()
        await asyncio.gather(*(asyncio.to_thread(engine.shutdown, timeout) for engine in engines), *self.draining)
