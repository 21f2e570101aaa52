"""The platform's state in one SQLite file (WAL): the schema of files, jobs and events, and the one shared connection.

Route handlers (FastAPI's thread pool) and the runner thread share one connection behind a lock:
every statement is a few milliseconds, and WAL lets `sqlite3` readers elsewhere (a backup, a
script) read while the server writes. A kill -9 loses no committed row, which is what lets a
restarted server pick its queue up again (runner.py).
"""

from __future__ import annotations

import secrets
import sqlite3
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT,                          -- the uploading key's id (serve/auth.py caller); NULL: a server without keys
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,               -- fine-tune, or fine-tune-results for a job's metrics CSV
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,                  -- where its bytes are, under TUNEFORGE_HOME/platform/files
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,                -- validating_files, queued, running, paused, succeeded, failed, cancelled
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,                -- JSON: OpenAI's method object, "auto" values resolved
    metadata TEXT,                       -- JSON
    tuneforge TEXT,                      -- JSON: the request's run-file overrides (translate.py)
    run_dir TEXT NOT NULL,
    error TEXT,                          -- JSON {code, message, param}
    fine_tuned_model TEXT,
    finished_at INTEGER,
    started_at INTEGER,
    trained_tokens INTEGER,
    total_steps INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    registry_version TEXT,
    pid INTEGER,                         -- the training process while running
    requested TEXT,                      -- cancel or pause, asked of a running job and not yet done
    resume INTEGER NOT NULL DEFAULT 0    -- 1: the next start continues from the run's last checkpoint
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,                  -- message or metrics
    data TEXT                            -- JSON
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (fine_tuned_model);
"""
ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `file-`, `ftjob-`, `ftevent-` and 24 random letters and digits."""
    return f"{prefix}-" + "".join(secrets.choice(ALPHABET) for _ in range(24))


class Database:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.executescript(SCHEMA)

    def rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def row(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        with self.lock:
            return self.conn.execute(sql, params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements that commit together (or not at all)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def page(rows: list, limit: int) -> tuple[list, bool]:
    """(the first `limit` rows, whether there were more): queries ask for limit + 1."""
    return rows[:limit], len(rows) > limit
