"""A job's events (OpenAI's `fine_tuning.job.event`): messages as its status changes, and its metrics as it trains.

Metrics events come from the run's metrics.jsonl (the training process writes it; MetricsTail
reads what it appended), one per logged step and one per validation, never twice for a step: a
resumed run logs again the steps after its checkpoint, with the same values, and a restarted
server finds the steps already reported in the table (tests/platform/test_restart.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tuneforge.platform.db import Database, new_id, page
from tuneforge.serve.errors import ApiError
from tuneforge.train.metrics import METRICS_FILE

LEVELS = ("info", "warn", "error")


def insert_event(conn: sqlite3.Connection, job_id: str, message: str, level: str = "info", kind: str = "message",
                 data: dict | None = None) -> None:
    """Add an event inside the caller's transaction (so a status and its event commit together)."""
    conn.execute("INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (new_id("ftevent"), job_id, int(time.time()), level, message, kind,
                  json.dumps(data) if data is not None else None))


def event_api(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"], "level": row["level"],
            "message": row["message"], "type": row["type"], "data": json.loads(row["data"]) if row["data"] else None}


class EventLog:
    def __init__(self, db: Database):
        self.db = db

    def add(self, job_id: str, message: str, level: str = "info", kind: str = "message", data: dict | None = None):
        with self.db.transaction() as conn:
            insert_event(conn, job_id, message, level, kind, data)

    def list(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first; `after` an event id: the events older than it."""
        clause, params = "", ()
        if after:
            anchor = self.db.row("SELECT seq FROM events WHERE id = ? AND job_id = ?", (after, job_id))
            if anchor is None:
                raise ApiError(400, f"after: no event '{after}' in job {job_id}", param="after", code="invalid_value")
            clause, params = " AND seq < ?", (anchor["seq"],)
        rows = self.db.rows(f"SELECT * FROM events WHERE job_id = ?{clause} ORDER BY seq DESC LIMIT ?",
                            (job_id, *params, limit + 1))
        found, more = page(rows, limit)
        return [event_api(row) for row in found], more

    def last_reported(self, job_id: str, key: str) -> int:
        """The last step whose `key` (train_loss or valid_loss) was reported, -1 if none (validation starts at step 0)."""
        row = self.db.row("SELECT MAX(json_extract(data, '$.step')) AS step FROM events WHERE job_id = ? AND "
                          f"type = 'metrics' AND json_extract(data, '$.{key}') IS NOT NULL", (job_id,))
        return -1 if row["step"] is None else int(row["step"])


class MetricsTail:
    """Turns what a run appends to metrics.jsonl into metrics events; the file may be replaced (a resume rewrites it)."""

    def __init__(self, events: EventLog, job_id: str, run_dir: Path, total_steps: int | None):
        self.events, self.job_id, self.path, self.total = events, job_id, run_dir / METRICS_FILE, total_steps
        self.inode, self.offset = None, 0
        self.reported = {key: events.last_reported(job_id, key) for key in ("train_loss", "valid_loss")}

    def poll(self) -> list[dict]:
        """Report the records appended since the last poll; returns them."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset = stat.st_ino, 0
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            text = handle.read()
        complete = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        records = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        for record in records:
            self.report(record)
        return records

    def report(self, record: dict) -> None:
        step = int(record.get("step", 0))
        of = f"/{self.total}" if self.total else ""
        if "train_loss" in record and step > self.reported["train_loss"]:
            self.reported["train_loss"] = step
            data = {"step": step, "train_loss": record["train_loss"], "total_steps": self.total,
                    "learning_rate": record.get("train_lr"), "tokens_per_s": record.get("train_tokens_per_s"),
                    "epoch": record.get("train_epoch")}
            self.events.add(self.job_id, f"Step {step}{of}: training loss={record['train_loss']:.4f}", kind="metrics",
                            data=data)
        if "eval_loss" in record and step > self.reported["valid_loss"]:
            self.reported["valid_loss"] = step
            self.events.add(self.job_id, f"Step {step}{of}: validation loss={record['eval_loss']:.4f}", kind="metrics",
                            data={"step": step, "valid_loss": record["eval_loss"], "total_steps": self.total})
