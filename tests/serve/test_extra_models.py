"""Extra models served by name (serve/extra.py): loaded on demand, least recently used unloaded, invisible to others."""

from __future__ import annotations

import asyncio

import pytest

from tuneforge.serve.errors import ApiError
from tuneforge.serve.extra import CatalogEntry, ExtraModels
from tuneforge.serve.options import ServeOptions


class Catalog:
    def __init__(self, entries: dict[str, tuple[CatalogEntry, str]]):
        self.entries = entries  # name -> (entry, owner)

    def find(self, name, owner):
        entry, entry_owner = self.entries.get(name, (None, None))
        return entry if entry is not None and owner in (None, entry_owner) else None

    def visible(self, owner):
        return [entry for entry, entry_owner in self.entries.values() if owner in (None, entry_owner)]


def test_loaded_on_demand_least_recently_used_unloaded_and_invisible_to_other_owners(tiny_model, tiny_served,
                                                                                       monkeypatch):
    import tuneforge.serve.extra as module
    from tuneforge.serve.served import load_served

    loads = []

    def counted(path, name):
        loads.append(name)
        return load_served(path, name=name)

    monkeypatch.setattr(module, "load_served", counted)
    entries = {name: (CatalogEntry(name, str(tiny_model), 0), "key-a") for name in ("ft:a", "ft:b")}
    extra = ExtraModels(Catalog(entries), ServeOptions(), capacity=1)

    async def scenario():
        await extra.ensure("ft:a", "key-a", tiny_served)
        first_engine = extra.get("ft:a")[1]
        await asyncio.gather(extra.ensure("ft:b", "key-a", tiny_served), extra.ensure("ft:b", "key-a", tiny_served))
        assert loads == ["ft:a", "ft:b"]  # two first requests at once share one load
        assert list(extra.loaded) == ["ft:b"] and extra.get("ft:a") is None  # ft:a, least recently used, unloaded
        await asyncio.gather(*extra.draining)
        assert not first_engine.alive
        await extra.ensure(tiny_served.default, "key-b", tiny_served)  # the main model: nothing to load
        with pytest.raises(ApiError) as hidden:
            await extra.ensure("ft:b", "key-b", tiny_served)  # loaded, but not key-b's
        assert hidden.value.status == 404 and "ft:b" not in hidden.value.detail.message.split("served:")[1]
        assert [card.id for card in extra.cards("key-b")] == []
        await extra.close(5)

    asyncio.run(scenario())
