"""Fine-tuning jobs in SQLite: their rows, status changes (each with its event), listing, and the models they made.

Statuses follow OpenAI's: validating_files -> queued -> running -> succeeded | failed | cancelled,
plus paused (pause stops the process and keeps its checkpoint; resume queues it again). A status
changes only from the statuses a transition names, in one statement, so the API and the runner
thread never both win: a job cancelled while it is being validated stays cancelled. `pid` is
set while a training process may be alive, also after a cancel or pause, until the runner has
seen the process end; a restarted server uses it to stop an orphan before resuming (runner.py).

The jobs are also the catalog of the models they made (serve/extra.py's ModelCatalog): a
succeeded job's `fine_tuned_model` is served from its run directory, and each kept checkpoint as
`ft:...:ckpt-step-N`. Visibility is per API key, as for files (files.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from tuneforge.platform.db import Database, page
from tuneforge.platform.events import insert_event
from tuneforge.platform.files import visible
from tuneforge.serve.errors import ApiError
from tuneforge.serve.extra import CatalogEntry
from tuneforge.train.checkpoint import checkpoint_name, checkpoint_root

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
CHECKPOINT_TAG = ":ckpt-step-"


@dataclass
class Job:
    id: str
    owner: str | None
    created_at: int
    status: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    method: dict
    metadata: dict | None
    tuneforge: dict | None
    run_dir: str
    error: dict | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    started_at: int | None = None
    trained_tokens: int | None = None
    total_steps: int | None = None
    result_files: list[str] = field(default_factory=list)
    registry_version: str | None = None
    pid: int | None = None
    requested: str | None = None
    resume: int = 0

    JSON = ("method", "metadata", "tuneforge", "error", "result_files")

    @staticmethod
    def of(row: sqlite3.Row) -> Job:
        values = dict(row)
        for key in Job.JSON:
            values[key] = json.loads(values[key]) if values[key] is not None else None
        return Job(**values)

    def row(self) -> tuple:
        return tuple(json.dumps(getattr(self, f.name)) if f.name in Job.JSON and getattr(self, f.name) is not None
                     else getattr(self, f.name) for f in fields(self))

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def hyperparameters(self) -> dict:
        return self.method.get(self.method["type"], {}).get("hyperparameters", {})


def columns() -> str:
    return ", ".join(f.name for f in fields(Job))


class JobStore:
    def __init__(self, db: Database):
        self.db = db

    def create(self, job: Job) -> Job:
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO jobs ({columns()}) VALUES ({', '.join('?' * len(fields(Job)))})", job.row())
            insert_event(conn, job.id, f"Created fine-tuning job: {job.id}")
            insert_event(conn, job.id, f"Validating training file: {job.training_file}"
                         + (f" and validation file: {job.validation_file}" if job.validation_file else ""))
        return job

    def find(self, job_id: str, owner: str | None = None, anyone: bool = False) -> Job:
        """The job, if `owner` may see it (`anyone`: the runner's view); 404 otherwise."""
        where, args = ("1", ()) if anyone else visible(owner)
        row = self.db.row(f"SELECT * FROM jobs WHERE id = ? AND {where}", (job_id, *args))
        if row is None:
            raise ApiError(404, f"No such fine-tuning job: '{job_id}'", param="fine_tuning_job_id", code="job_not_found")
        return Job.of(row)

    def list(self, owner: str | None, after: str | None, limit: int, metadata: dict[str, str] | None = None
             ) -> tuple[list[Job], bool]:
        """Newest first; `after` a job id: the jobs created before it."""
        where, args = visible(owner)
        clauses, params = [where], list(args)
        if after:
            anchor = self.db.row("SELECT rowid FROM jobs WHERE id = ?", (after,))
            if anchor is None:
                raise ApiError(400, f"after: no such fine-tuning job '{after}'", param="after", code="invalid_value")
            clauses.append("rowid < ?")
            params.append(anchor["rowid"])
        for key, value in (metadata or {}).items():
            clauses.append("json_extract(metadata, ?) = ?")
            params += [f'$."{key}"', value]
        rows = self.db.rows(f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY rowid DESC LIMIT ?",
                            (*params, limit + 1))
        found, more = page(rows, limit)
        return [Job.of(row) for row in found], more

    def with_status(self, *statuses: str) -> list[Job]:
        """Oldest first: the order jobs are validated and started in."""
        marks = ", ".join("?" * len(statuses))
        return [Job.of(r) for r in self.db.rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses)]

    def with_process(self) -> list[Job]:
        return [Job.of(r) for r in self.db.rows("SELECT * FROM jobs WHERE pid IS NOT NULL ORDER BY rowid")]

    def move(self, job_id: str, to: str, allowed: tuple[str, ...], message: str | None = None, level: str = "info",
             **values) -> bool:
        """Set the status to `to` (and other columns) if it is one of `allowed`; with its event. False if it was not."""
        values = {k: json.dumps(v) if k in Job.JSON and v is not None else v for k, v in values.items()}
        if to in FINISHED:
            values.setdefault("finished_at", int(time.time()))
        sets = ", ".join(["status = ?", *(f"{key} = ?" for key in values)])
        marks = ", ".join("?" * len(allowed))
        with self.db.transaction() as conn:
            changed = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                                   (to, *values.values(), job_id, *allowed)).rowcount
            if changed and message:
                insert_event(conn, job_id, message, level)
        return bool(changed)

    def update(self, job_id: str, **values) -> None:
        values = {k: json.dumps(v) if k in Job.JSON and v is not None else v for k, v in values.items()}
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(f'{key} = ?' for key in values)} WHERE id = ?",
                         (*values.values(), job_id))

    # --- the catalog of fine-tuned models (serve/extra.py) -----------------------------------------

    def find_model(self, name: str, owner: str | None) -> CatalogEntry | None:
        base_name, tag, step = name.partition(CHECKPOINT_TAG)
        where, args = visible(owner)
        row = self.db.row(f"SELECT * FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded' AND {where}",
                          (base_name, *args))
        if row is None:
            return None
        entry = model_entry(Job.of(row))
        if not tag:
            return entry
        checkpoint = checkpoint_root(Path(entry.path)) / checkpoint_name(int(step)) if step.isdigit() else None
        if checkpoint is None or not checkpoint.is_dir():
            return None
        return CatalogEntry(name, str(checkpoint), entry.created, entry.parent)

    def visible_models(self, owner: str | None) -> list[CatalogEntry]:
        where, args = visible(owner)
        rows = self.db.rows(f"SELECT * FROM jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL AND "
                            f"{where} ORDER BY rowid", args)
        return [model_entry(Job.of(row)) for row in rows]


def model_entry(job: Job) -> CatalogEntry:
    return CatalogEntry(job.fine_tuned_model, job.run_dir, job.finished_at or job.created_at, job.model)


class JobCatalog:
    """The JobStore seen as serve's ModelCatalog."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs

    def find(self, name: str, owner: str | None) -> CatalogEntry | None:
        return self.jobs.find_model(name, owner) if name.startswith("ft:") else None

    def visible(self, owner: str | None) -> list[CatalogEntry]:
        return self.jobs.visible_models(owner)
