"""The files API's store: uploaded bytes under TUNEFORGE_HOME/platform/files with their sha256, rows in the database.

An upload is streamed to a temporary file while it is hashed and counted, then renamed into place
and recorded, so a failed or oversized upload leaves nothing behind. The stored name keeps the
upload's extension (.jsonl, .csv, .parquet ...), which is how tuneforge's readers choose a format.
A file belongs to the key that uploaded it (owner; None on a server without keys, where all is
shared); another key gets 404, as for a file that does not exist. A file that an unfinished job
trains on cannot be deleted: the job (and its resume after a restart) reads it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuneforge.platform.defaults import MAX_UPLOAD_BYTES
from tuneforge.data.readers import READABLE
from tuneforge.platform.db import Database, new_id, page
from tuneforge.serve.errors import ApiError

UPLOAD_PURPOSES = ("fine-tune",)
RESULTS_PURPOSE = "fine-tune-results"
DEFAULT_MAX_UPLOAD_BYTES = MAX_UPLOAD_BYTES
UNFINISHED = ("validating_files", "queued", "running", "paused")


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str | None
    filename: str
    purpose: str
    bytes: int
    sha256: str
    path: str
    created_at: int

    def to_api(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None, "sha256": self.sha256}


def visible(owner: str | None) -> tuple[str, tuple]:
    """A WHERE clause for rows `owner` may see (None: a server without keys, every row)."""
    return ("1", ()) if owner is None else ("owner = ?", (owner,))


class FileStore:
    def __init__(self, db: Database, root: Path):
        self.db, self.root = db, root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, source: BinaryIO, filename: str, purpose: str, owner: str | None) -> StoredFile:
        """Copy `source` in, hashing as it goes."""
        filename = Path(filename or "upload.jsonl").name
        suffix = Path(filename).suffix.lower()
        file_id = new_id("file")
        path = self.root / (file_id + (suffix if suffix in READABLE else ".jsonl"))
        tmp = path.with_name(path.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as out:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        stored = StoredFile(file_id, owner, filename, purpose, size, digest.hexdigest(), str(path), int(time.time()))
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (stored.id, owner, filename, purpose, size, stored.sha256, stored.path, stored.created_at))
        return stored

    def add_path(self, path: Path, filename: str, purpose: str, owner: str | None) -> StoredFile:
        with path.open("rb") as source:
            return self.add(source, filename, purpose, owner)

    def get(self, file_id: str, owner: str | None, param: str = "file_id") -> StoredFile:
        where, args = visible(owner)
        row = self.db.row(f"SELECT * FROM files WHERE id = ? AND {where}", (file_id, *args))
        if row is None:
            raise ApiError(404, f"No such file: '{file_id}'", param=param, code="file_not_found")
        return StoredFile(**dict(row))

    def list(self, owner: str | None, purpose: str | None, after: str | None, limit: int,
             order: str = "desc") -> tuple[list[StoredFile], bool]:
        where, args = visible(owner)
        clauses, params = [where], list(args)
        if purpose:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after:
            anchor = self.db.row("SELECT rowid FROM files WHERE id = ?", (after,))
            if anchor is None:
                raise ApiError(400, f"after: no such file '{after}'", param="after", code="invalid_value")
            clauses.append("rowid < ?" if order == "desc" else "rowid > ?")
            params.append(anchor["rowid"])
        direction = "DESC" if order == "desc" else "ASC"
        rows = self.db.rows(f"SELECT * FROM files WHERE {' AND '.join(clauses)} ORDER BY rowid {direction} LIMIT ?",
                            (*params, limit + 1))
        found, more = page(rows, limit)
        return [StoredFile(**dict(row)) for row in found], more

    def delete(self, file_id: str, owner: str | None) -> None:
        stored = self.get(file_id, owner)
        marks = ",".join("?" * len(UNFINISHED))
        using = self.db.row(f"SELECT id FROM jobs WHERE (training_file = ? OR validation_file = ?) "
                            f"AND status IN ({marks})", (file_id, file_id, *UNFINISHED))
        if using is not None:
            raise ApiError(409, f"The file '{file_id}' is used by the unfinished job {using['id']}; cancel it or "
                           "wait for it to end first", param="file_id", code="file_in_use")
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        Path(stored.path).unlink(missing_ok=True)

    def open(self, stored: StoredFile) -> Path:
        path = Path(stored.path)
        if not path.is_file():
            raise ApiError(404, f"The content of file '{stored.id}' is gone from the server", param="file_id",
                           code="file_not_found")
        return path
