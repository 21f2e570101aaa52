"""The request log's SQLite database: its schema, how it is opened (WAL), and the rows monitoring reads.

One file holds what the server answered (`requests`) and what users said about it (`feedback`),
so the monitor report, the drift check and curation read the same rows the server wrote; a busy
timeout keeps a short lock from becoming an error. The writer (serve side) lives in monitor/requestlog.py.

Journal: SQLite's rollback journal (DELETE), not WAL, and no memory-mapped I/O. WAL keeps its index
in a memory-mapped `-shm` file; when that file loses its pages under the mapping (truncated, made
immutable, a full or vanished filesystem) the next access kills the whole server with SIGBUS
(reproduced: a WAL writer process dies with signal 7 when its -shm is truncated), and no Python code
can catch a signal raised by a memory access. The rollback journal is written with write(), so the
same faults are ordinary I/O errors that the writer counts. The price, measured by
bench/request_log_storage.py in one run (bench/RESULTS.md): about 1,750 records/s at 50 records per
commit against WAL's 6,400 (the writer commits whatever has queued in one transaction, so a busy server
gets the large batches), and a long read holds the writer off for up to its busy timeout. WAL with
`locking_mode=EXCLUSIVE` maps nothing either but shuts every other process out (`tuneforge monitor`
could not read while the server runs); a writer in another process would keep WAL at the cost of a
process to supervise. A database left in WAL mode by an older tuneforge is switched back on open;
while another process still holds it in WAL mode the open fails (and is counted) rather than mapping it.
Pinned by tests/monitor/test_log_storage.py.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,            -- the response id the client got (chatcmpl-..., cmpl-...), also X-Request-Id
    created REAL NOT NULL,          -- unix time the request arrived
    endpoint TEXT NOT NULL,         -- /v1/chat/completions or /v1/completions
    model TEXT NOT NULL,            -- the model name the request was answered by (as in the response)
    model_version TEXT,             -- the registry version id when serving from the registry, else NULL
    messages TEXT NOT NULL,         -- JSON [{role, content}]; a text completion's prompt is [{"role": "prompt", ...}]
    output TEXT,                    -- choice 0's text (NULL when the request failed before any output)
    outputs TEXT,                   -- JSON [{text, finish_reason}] for every choice
    finish_reason TEXT,             -- choice 0's: stop, length, or NULL on error
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,                 -- arrival to last token
    ttft_s REAL,                    -- arrival to first token
    status INTEGER NOT NULL,        -- HTTP status: 200, or the error's
    error TEXT                      -- the error message, when status is not 200
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    created REAL NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    correction TEXT,                -- the answer the user says was right
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""


def connect(path: Path, readonly: bool = False, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection with WAL, foreign keys and a busy timeout; the schema is created unless read-only.

    `check_same_thread=False`: the server's writer thread owns the connection it opens, readers
    open their own; a connection is never shared between threads at the same time.
    """
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise ConfigError(f"{path}: no request log database here (tuneforge serve writes one; see --log-db)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA mmap_size = 0")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if mode.lower() != "delete":
            conn.close()
            raise sqlite3.OperationalError(f"{path} is in {mode} journal mode and another process has it open; "
                                           "the request log does not memory-map a -shm file (see monitor/store.py)")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.commit()
    else:
        check_schema(conn, path)
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a tuneforge request log ({exc})") from exc
    if not {"requests", "feedback"} <= tables:
        raise ConfigError(f"{path}: not a tuneforge request log (no requests/feedback tables)")


@dataclass(frozen=True)
class LoggedRequest:
    id: str
    created: float
    endpoint: str
    model: str
    model_version: str | None
    messages: list[dict]
    output: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    ttft_s: float | None
    status: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def version(self) -> str:
        """What monitoring groups by: the registry version, else the model name."""
        return self.model_version or self.model


@dataclass(frozen=True)
class Feedback:
    request_id: str
    created: float
    rating: int  # +1 approved, -1 rejected
    correction: str | None
    comment: str | None


def read_requests(conn: sqlite3.Connection, since: float | None = None, until: float | None = None) -> list[LoggedRequest]:
    """Logged requests in arrival order, optionally within [since, until)."""
    rows = conn.execute(
        "SELECT * FROM requests WHERE created >= ? AND created < ? ORDER BY created, id",
        (since if since is not None else float("-inf"), until if until is not None else float("inf")),
    )
    return [
        LoggedRequest(
            id=row["id"], created=row["created"], endpoint=row["endpoint"], model=row["model"],
            model_version=row["model_version"], messages=json.loads(row["messages"]), output=row["output"],
            finish_reason=row["finish_reason"], prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"], latency_s=row["latency_s"], ttft_s=row["ttft_s"],
            status=row["status"], error=row["error"],
        )
        for row in rows
    ]


def read_feedback(conn: sqlite3.Connection) -> dict[str, list[Feedback]]:
    """Feedback by request id, oldest first (the latest rating of a request is the last one)."""
    feedback: dict[str, list[Feedback]] = {}
    for row in conn.execute("SELECT * FROM feedback ORDER BY created, id"):
        feedback.setdefault(row["request_id"], []).append(
            Feedback(row["request_id"], row["created"], row["rating"], row["correction"], row["comment"])
        )
    return feedback
