"""The model registry: versions with their lineage and evidence, and aliases (production, staging) in SQLite.

A version points at a run directory (or exported model) and records what it came from: the base
model, the parent version it was fine-tuned from, the sha256 of every data file, the resolved run
file, its eval results and whether its gates passed. An alias names the version a server should
serve; every alias change is appended to `alias_history`, so `rollback` can restore the previous
version even after several promotions, and the history says who was live when.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError, TuneforgeError

REGISTRY_ENV = "TUNEFORGE_REGISTRY"
DEFAULT_REGISTRY = Path("tuneforge-registry.db")
ALIASES = ("production", "staging")
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,                 -- v1, v2, ... in registration order
    created REAL NOT NULL,
    path TEXT NOT NULL,                  -- the run directory (or model directory) that holds the model
    base_model TEXT NOT NULL,
    method TEXT NOT NULL,                -- lora or full
    parent TEXT REFERENCES versions (id),
    dataset_hashes TEXT NOT NULL,        -- JSON {file: sha256}
    config TEXT,                         -- the resolved run file (YAML text)
    eval TEXT,                           -- JSON: the run's eval summary and metrics
    gate TEXT,                           -- JSON {"passed": bool, "gates": [...]}, NULL when no gates were checked
    note TEXT
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL REFERENCES versions (id),
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT,
    action TEXT NOT NULL,                -- promote or rollback
    created REAL NOT NULL
);
"""


class RegistryError(TuneforgeError):
    """An unknown version or alias, or a registry file that is not one."""


def registry_path(given: Path | None = None) -> Path:
    """--registry, else $TUNEFORGE_REGISTRY, else ./tuneforge-registry.db."""
    return Path(given or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def open_registry(path: Path, create: bool = True) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.is_file():
        raise RegistryError(f"{path}: no model registry here (register a run with `tuneforge models register RUN`)")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RegistryError(f"{path}: not a tuneforge model registry ({exc})") from exc
    return conn


@dataclass(frozen=True)
class Version:
    id: str
    created: float
    path: str
    base_model: str
    method: str
    parent: str | None
    dataset_hashes: dict[str, str]
    config: str | None
    eval: dict
    gate: dict | None
    note: str | None

    @property
    def gate_outcome(self) -> str:
        return "none" if self.gate is None else "passed" if self.gate.get("passed") else "failed"


def _version(row: sqlite3.Row) -> Version:
    return Version(
        id=row["id"], created=row["created"], path=row["path"], base_model=row["base_model"], method=row["method"],
        parent=row["parent"], dataset_hashes=json.loads(row["dataset_hashes"]), config=row["config"],
        eval=json.loads(row["eval"]) if row["eval"] else {}, gate=json.loads(row["gate"]) if row["gate"] else None,
        note=row["note"],
    )


def add_version(
    conn: sqlite3.Connection, path: Path, base_model: str, method: str, *, parent: str | None = None,
    dataset_hashes: dict[str, str] | None = None, config: str | None = None, eval: dict | None = None,
    gate: dict | None = None, note: str | None = None,
) -> Version:
    """Register a model; ids count up (v1, v2, ...) and are never reused."""
    if parent is not None:
        get_version(conn, parent)
    with conn:  # one transaction: the id and the row
        count = conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
        version_id = f"v{count + 1}"
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (version_id, time.time(), str(Path(path).resolve()), base_model, method, parent,
             json.dumps(dataset_hashes or {}), config, json.dumps(eval or {}),
             json.dumps(gate) if gate is not None else None, note),
        )
    return get_version(conn, version_id)


def list_versions(conn: sqlite3.Connection) -> list[Version]:
    rows = conn.execute("SELECT * FROM versions ORDER BY created, CAST(SUBSTR(id, 2) AS INTEGER)")
    return [_version(row) for row in rows]


def get_version(conn: sqlite3.Connection, version_id: str) -> Version:
    row = conn.execute("SELECT * FROM versions WHERE id = ?", (version_id,)).fetchone()
    if row is None:
        known = ", ".join(v.id for v in list_versions(conn)) or "none registered"
        raise RegistryError(f"no model version {version_id!r} in the registry (versions: {known})")
    return _version(row)


def aliases(conn: sqlite3.Connection) -> dict[str, str]:
    """alias -> version id."""
    return {row["name"]: row["version"] for row in conn.execute("SELECT name, version FROM aliases ORDER BY name")}


def resolve(conn: sqlite3.Connection, name: str) -> Version:
    """A version id or an alias -> the version."""
    row = conn.execute("SELECT version FROM aliases WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return get_version(conn, row["version"])
    if name in ALIASES:
        raise RegistryError(f"no version is {name} yet (promote one: tuneforge models promote VERSION --to {name})")
    return get_version(conn, name)


def set_alias(conn: sqlite3.Connection, name: str, version_id: str, action: str = "promote") -> str | None:
    """Point `name` at a version; returns the version it pointed at before."""
    check_alias_name(name)
    get_version(conn, version_id)
    with conn:
        row = conn.execute("SELECT version FROM aliases WHERE name = ?", (name,)).fetchone()
        previous = row["version"] if row else None
        now = time.time()
        conn.execute("INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
                     "updated = excluded.updated", (name, version_id, now))
        conn.execute("INSERT INTO alias_history (name, version, previous, action, created) VALUES (?, ?, ?, ?, ?)",
                     (name, version_id, previous, action, now))
    return previous


def rollback(conn: sqlite3.Connection, name: str = "production") -> tuple[str, str]:
    """Point `name` back at the version it held before its current one; returns (from, to).

    Walks the history backwards past versions that were themselves rolled away from, so two
    rollbacks in a row go two versions back rather than toggling.
    """
    history = conn.execute("SELECT version, previous, action FROM alias_history WHERE name = ? ORDER BY id",
                           (name,)).fetchall()
    if not history:
        raise RegistryError(f"alias {name!r} has never been set; nothing to roll back")
    current = history[-1]["version"]
    stack: list[str] = []
    for entry in history:
        if entry["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(entry["version"])
    # stack[-1] is the live version; the one under it is what it replaced.
    if len(stack) < 2:
        raise RegistryError(f"alias {name!r} has no earlier version to roll back to (it is {current})")
    target = stack[-2]
    set_alias(conn, name, target, action="rollback")
    return current, target


def alias_history(conn: sqlite3.Connection, name: str | None = None) -> list[dict]:
    query = "SELECT * FROM alias_history" + (" WHERE name = ?" if name else "") + " ORDER BY id"
    return [dict(row) for row in conn.execute(query, (name,) if name else ())]


def check_alias_name(name: str) -> None:
    if not name or name.startswith("v") and name[1:].isdigit():
        raise ConfigError(f"alias {name!r}: an alias cannot look like a version id (v1, v2, ...)")
