"""The request log's journal mode: write cost of WAL (the old default) beside the rollback journals, in one run.

WAL memory-maps the `-shm` file, and a process whose mapping loses its backing pages (the file truncated,
made immutable, or on a full disk) dies of SIGBUS; the rollback journals (TRUNCATE, DELETE) and WAL with
EXCLUSIVE locking map nothing. This measures what each costs the writer thread at the batch sizes it
sees (1 record per transaction on a quiet server, 50 on a busy one), and whether a second process can
read while the writer has the database open (what `tuneforge monitor` needs).

    PYTHONPATH=src python bench/request_log_storage.py [--records 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from tuneforge.monitor.requestlog import INSERT_REQUEST, Output, RequestRecord
from tuneforge.monitor.store import SCHEMA

MODES = {"wal": ("WAL", None), "wal+exclusive": ("WAL", "EXCLUSIVE"), "truncate": ("TRUNCATE", None),
         "delete": ("DELETE", None)}


def open_db(path: Path, journal: str, locking: str | None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=0.5)
    if locking:
        conn.execute(f"PRAGMA locking_mode = {locking}")
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.executescript(SCHEMA)
    return conn


def record(i: int) -> tuple:
    return RequestRecord(id=f"chatcmpl-{i}", created=time.time(), endpoint="/v1/chat/completions", model="m",
                         model_version=None, messages=[{"role": "user", "content": "What is 2 plus 2? " * 4}],
                         outputs=(Output("4. " * 20, "stop"),), prompt_tokens=20, completion_tokens=40,
                         latency_s=0.5, ttft_s=0.1).row(lambda text: text)


def measure(directory: Path, name: str, records: int, batch: int) -> tuple[float, bool]:
    journal, locking = MODES[name]
    path = directory / f"{name}-{batch}.db"
    conn = open_db(path, journal, locking)
    start = time.perf_counter()
    for first in range(0, records, batch):
        with conn:
            conn.executemany(INSERT_REQUEST, [record(i) for i in range(first, min(first + batch, records))])
    elapsed = time.perf_counter() - start
    try:  # another connection (as another process would) reading while the writer keeps its connection open
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        reader.execute("SELECT count(*) FROM requests").fetchone()
        readable = True
    except sqlite3.OperationalError:
        readable = False
    conn.close()
    return records / elapsed, readable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        print(f"{'mode':<15}{'records/s, 1 per commit':>26}{'records/s, 50 per commit':>27}{'readable meanwhile':>21}")
        for name in MODES:
            single, readable = measure(Path(tmp), name, args.records // 4, 1)
            batched, _ = measure(Path(tmp), name, args.records, 50)
            print(f"{name:<15}{single:>26,.0f}{batched:>27,.0f}{'yes' if readable else 'no':>21}")


if __name__ == "__main__":
    main()
