"""The request log's writer: finished requests and feedback reach SQLite from one background thread.

Serving never waits on the disk and never fails because of it. The server hands a finished
record to `RequestLog.submit`, which only puts it on a bounded queue; when the queue is full the
record is dropped and counted. One writer thread owns the only write connection: it writes what
has queued up in one transaction per batch, applies retention (when it opens the database, then
every `prune_every` records or `prune_interval_s` seconds), and catches every SQLite or OS error
(a locked or read-only database, a full disk, a directory it cannot create). Failures and lost
records are counted in `LogStats` (the server's /metrics reads them) and reported in the server
log at most once per `report_interval_s`, so a broken disk does not flood it.

Feedback travels on the same queue and the same thread, so a feedback for a request whose record
is still queued finds it: the queue is first in, first out, and the record is written first.
PII redaction (`data.cleaning.redact_pii`) runs on the writer thread, off the event loop.

The database file can be removed or replaced under a running server (its directory deleted by a
cleanup job, the file rotated away). SQLite would go on writing into the unlinked file and every
record would vanish while `written` rose; so before each batch, and again after it, the writer
compares the path's inode with the one it opened. When they differ it closes the old connection,
opens the path again (recreating the directory), writes the batch there (a batch that went into the
vanished file is written again), counts a failure and a reopen, and counts as `lost` the records
this server had written into the file that is gone. /metrics shows all three
(tests/monitor/test_log_storage.py).
The schema and `connect` are in monitor/store.py.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.monitor.store import connect

DEFAULT_LOG_DB = "tuneforge-requests.db"
DAY_S = 86_400.0
log = logging.getLogger("tuneforge.serve")


@dataclass(frozen=True)
class LogSettings:
    path: Path
    retention_days: float = 30.0  # requests older than this are deleted (with their feedback)
    max_rows: int = 1_000_000  # beyond this many requests, the oldest are deleted
    redact_pii: bool = False  # emails, phone numbers, IPs, card numbers replaced before anything is written
    queue_size: int = 1_000  # records waiting for the writer (bounds memory); more are dropped and counted
    batch_size: int = 500  # records written in one transaction at most
    prune_every: int = 1_000  # records written between retention passes ...
    prune_interval_s: float = 600.0  # ... or seconds, whichever comes first
    busy_timeout_s: float = 5.0  # how long a write waits on another process's lock before it counts as failed
    report_interval_s: float = 60.0  # at most one server-log line per kind of trouble in this time

    def __post_init__(self) -> None:
        if self.retention_days <= 0:
            raise ValueError(f"log_retention_days must be positive, got {self.retention_days}")
        for name in ("max_rows", "queue_size", "batch_size", "prune_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"log_{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Output:
    text: str
    finish_reason: str | None  # None: the choice did not finish (an error, or the client left)


@dataclass(frozen=True)
class RequestRecord:
    """One answered (or refused) request, as the `requests` table stores it (see monitor/store.py)."""

    id: str
    created: float  # unix time of arrival
    endpoint: str
    model: str
    model_version: str | None
    messages: list[dict]  # [{role, content}]; a text completion's prompts have role "prompt"
    outputs: tuple[Output, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    status: int = 200
    error: str | None = None

    def row(self, clean) -> tuple:
        first = self.outputs[0] if self.outputs else None
        messages = [{**m, "content": clean(m.get("content"))} for m in self.messages]
        outputs = [{"text": clean(o.text), "finish_reason": o.finish_reason} for o in self.outputs]
        return (self.id, self.created, self.endpoint, self.model, self.model_version,
                json.dumps(messages, ensure_ascii=False), outputs[0]["text"] if first else None,
                json.dumps(outputs, ensure_ascii=False) if outputs else None, first.finish_reason if first else None,
                self.prompt_tokens, self.completion_tokens, self.latency_s, self.ttft_s, self.status, clean(self.error))


@dataclass(frozen=True)
class FeedbackRecord:
    request_id: str
    rating: int  # +1 approved, -1 rejected
    correction: str | None = None
    comment: str | None = None
    created: float = field(default_factory=time.time)


class LogUnavailable(Exception):
    """A feedback could not be stored (the log is closing, overloaded, or its database cannot be written)."""


@dataclass
class LogStats:
    """Counters the writer keeps; the server's /metrics reads them at scrape time."""

    written: int = 0  # request records stored
    feedback: int = 0  # feedback rows stored
    dropped: dict[str, int] = field(default_factory=lambda: {"queue_full": 0, "write_failed": 0, "closed": 0})
    failures: int = 0  # SQLite/OS errors caught (opening, writing, pruning, feedback)
    pruned: int = 0  # request rows deleted by retention
    queued: int = 0  # set at scrape time
    reopened: int = 0  # times the database file was found removed or replaced, and opened again
    lost: int = 0  # records this server had written into a database file that was then removed or replaced


INSERT_REQUEST = ("INSERT INTO requests (id, created, endpoint, model, model_version, messages, output, outputs, "
                  "finish_reason, prompt_tokens, completion_tokens, latency_s, ttft_s, status, error) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_FEEDBACK = "INSERT INTO feedback (request_id, created, rating, correction, comment) VALUES (?, ?, ?, ?, ?)"


class RequestLog:
    """The server's handle: `submit` records, `add_feedback`, `flush`, `close`; `start` runs the writer."""

    def __init__(self, settings: LogSettings):
        self.settings = settings
        self.stats = LogStats()
        self._lock = threading.Lock()  # guards stats against the event loop and the writer at once
        self._queue: queue.Queue = queue.Queue(settings.queue_size)
        self._thread = threading.Thread(target=self._run, name="tuneforge-request-log", daemon=True)
        self._closed = False
        self._report = RateLimitedReport(settings.report_interval_s)
        self._writer = Writer(settings, self)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: RequestRecord) -> None:
        """Queue a finished request; never blocks, never raises (a full queue drops it and counts it)."""
        if self._closed:
            self.count_dropped("closed", 1)
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.count_dropped("queue_full", 1)
            self._report("queue_full", f"request log: the write queue is full ({self.settings.queue_size} records "
                         "waiting); records are being dropped")

    def add_feedback(self, feedback: FeedbackRecord) -> Future:
        """A future of the new feedback row's id, or None when no request has that id; LogUnavailable on failure."""
        future: Future = Future()
        if self._closed:
            future.set_exception(LogUnavailable("the server is shutting down"))
            return future
        try:
            self._queue.put_nowait((feedback, future))
        except queue.Full:
            future.set_exception(LogUnavailable("the request log's write queue is full; retry shortly"))
        return future

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or failed); False on timeout."""
        done = threading.Event()
        if not self._thread.is_alive():
            return False
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued, close the database and stop the writer; False if it did not stop in time."""
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        if self._thread.is_alive():
            try:
                self._queue.put(STOP, timeout=timeout)
            except queue.Full:
                log.warning("request log: the writer did not take the stop request within %s s", timeout)
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self._fail_leftovers()
        return stopped

    def count_dropped(self, reason: str, n: int) -> None:
        with self._lock:
            self.stats.dropped[reason] += n

    def count(self, written: int = 0, feedback: int = 0, failures: int = 0, pruned: int = 0, reopened: int = 0,
              lost: int = 0) -> None:
        with self._lock:
            stats = self.stats
            stats.written, stats.feedback = stats.written + written, stats.feedback + feedback
            stats.failures, stats.pruned = stats.failures + failures, stats.pruned + pruned
            stats.reopened, stats.lost = stats.reopened + reopened, stats.lost + lost

    def snapshot(self) -> LogStats:
        with self._lock:
            stats = self.stats
            return LogStats(stats.written, stats.feedback, dict(stats.dropped), stats.failures, stats.pruned,
                            self._queue.qsize(), stats.reopened, stats.lost)

    def failed(self, action: str, exc: BaseException) -> None:
        """Count and (rate-limited) report an SQLite/OS error; the request that caused it is unaffected."""
        self.count(failures=1)
        self._report("failure", f"request log {self.settings.path}: {action} failed: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        try:
            self._writer.open()
            stopping = False
            while not stopping:
                try:
                    first = self._queue.get(timeout=self.settings.prune_interval_s)
                except queue.Empty:
                    self._writer.maybe_prune()
                    continue
                batch = [first]
                while len(batch) < self.settings.batch_size and not isinstance(batch[-1], Stop):
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = self._writer.handle(batch)
        except Exception as exc:  # a bug must not stop logging silently
            log.exception("request log: the writer thread stopped: %s", exc)
        finally:
            self._writer.close()

    def _fail_leftovers(self) -> None:
        """Anything queued after the stop request: records count as dropped, feedback futures fail."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, RequestRecord):
                self.count_dropped("closed", 1)
            elif isinstance(item, tuple) and item[1].set_running_or_notify_cancel():
                item[1].set_exception(LogUnavailable("the server is shutting down"))
            elif isinstance(item, threading.Event):
                item.set()


class Stop:
    """The queue item that ends the writer (after everything queued before it)."""


STOP = Stop()


class Writer:
    """The writer thread's side: the connection (opened lazily, reopened after a failure), batches, retention."""

    def __init__(self, settings: LogSettings, owner: RequestLog):
        self.settings, self.owner = settings, owner
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file the connection has open
        self.written_here = 0  # records written into that file
        self.open_error = ""  # why the last open failed
        self.since_prune = 0
        self.last_prune = 0.0
        self.clean = redactor(settings.redact_pii)

    def open(self) -> sqlite3.Connection | None:
        self.vanished()
        if self.conn is None:
            try:
                self.conn = connect(self.settings.path, timeout_s=self.settings.busy_timeout_s)
                stat = os.stat(self.settings.path)
            except (sqlite3.Error, OSError) as exc:
                self.close()
                self.owner.failed("opening the database", exc)
                self.open_error = f"{type(exc).__name__}: {exc}"
                return None
            self.identity, self.written_here = (stat.st_dev, stat.st_ino), 0
            self.prune()  # retention at start
        return self.conn

    def vanished(self) -> bool:
        """True (and the connection closed, the loss counted) when the open file is no longer at the path."""
        if self.conn is None:
            return False
        try:
            stat = os.stat(self.settings.path)
            if (stat.st_dev, stat.st_ino) == self.identity:
                return False
            what = "replaced"
        except OSError:
            what = "removed"
        lost = self.written_here
        self.close()
        self.owner.count(reopened=1, lost=lost)
        self.owner.failed("the database file", OSError(f"it was {what} while the server ran; opening it again "
                                                       f"({lost} record(s) written into the old file are gone)"))
        return True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error as exc:
                self.owner.failed("closing the database", exc)
            self.conn, self.identity = None, None

    def handle(self, batch: list) -> bool:
        """Write a batch in queue order; True when it held the stop request."""
        records: list[RequestRecord] = []
        for item in batch:
            if isinstance(item, RequestRecord):
                records.append(item)
                continue
            self.write(records)
            records = []
            if isinstance(item, Stop):
                return True
            if isinstance(item, threading.Event):
                item.set()
            else:
                self.feedback(*item)
        self.write(records)
        return False

    def write(self, records: list[RequestRecord], retry: bool = True) -> None:
        if not records:
            return
        try:
            rows = [record.row(self.clean) for record in records]
            conn = self.open()
            if conn is None:
                raise LogUnavailable(self.open_error)
            with conn:  # one transaction: committed, or rolled back on error
                conn.executemany(INSERT_REQUEST, rows)
        except (sqlite3.Error, OSError, LogUnavailable, ValueError, TypeError) as exc:
            if retry and self.vanished():  # the file went away during the write: write into the new one
                return self.write(records, retry=False)
            if not isinstance(exc, LogUnavailable):  # an open failure was already counted
                self.owner.failed(f"writing {len(records)} request record(s)", exc)
            self.owner.count_dropped("write_failed", len(records))
            return
        if retry and self.vanished():  # committed into a file that is gone: write the batch again
            return self.write(records, retry=False)
        self.written_here += len(records)
        self.owner.count(written=len(records))
        self.since_prune += len(records)
        self.maybe_prune()

    def feedback(self, feedback: FeedbackRecord, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            conn = self.open()
            if conn is None:
                raise LogUnavailable(f"the request log {self.settings.path} cannot be opened ({self.open_error})")
            with conn:
                if conn.execute("SELECT 1 FROM requests WHERE id = ?", (feedback.request_id,)).fetchone() is None:
                    future.set_result(None)
                    return
                cursor = conn.execute(INSERT_FEEDBACK, (feedback.request_id, feedback.created, feedback.rating,
                                                        self.clean(feedback.correction), self.clean(feedback.comment)))
        except LogUnavailable as exc:
            future.set_exception(exc)
            return
        except (sqlite3.Error, OSError) as exc:
            self.owner.failed("storing a feedback", exc)
            future.set_exception(LogUnavailable(f"the request log cannot be written: {exc}"))
            return
        self.owner.count(feedback=1)
        future.set_result(cursor.lastrowid)

    def maybe_prune(self) -> None:
        due = time.monotonic() - self.last_prune >= self.settings.prune_interval_s
        if self.conn is not None and (due or self.since_prune >= self.settings.prune_every):
            self.prune()

    def prune(self) -> None:
        self.since_prune, self.last_prune = 0, time.monotonic()
        try:
            removed = prune(self.conn, self.settings.retention_days, self.settings.max_rows)
        except sqlite3.Error as exc:
            self.owner.failed("applying retention", exc)
            return
        self.owner.count(pruned=removed)


def prune(conn: sqlite3.Connection, retention_days: float, max_rows: int, now: float | None = None) -> int:
    """Delete requests older than `retention_days`, then the oldest beyond `max_rows`; their feedback goes with them.

    Returns how many requests were deleted. Feedback rows go by the schema's ON DELETE CASCADE
    (connect() turns foreign keys on); nothing else is touched.
    """
    cutoff = (time.time() if now is None else now) - retention_days * DAY_S
    with conn:
        old = conn.execute("DELETE FROM requests WHERE created < ?", (cutoff,)).rowcount
        excess = conn.execute(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests ORDER BY created DESC, id DESC "
            "LIMIT -1 OFFSET ?)", (max_rows,)).rowcount
    return old + excess


def redactor(enabled: bool):
    """text -> text with PII replaced (or unchanged when redaction is off); None stays None."""
    if not enabled:
        return lambda text: text
    from tuneforge.data.cleaning import redact_pii  # imported only when used: it brings numpy

    def clean(text: str | None) -> str | None:
        return None if text is None else redact_pii(text)[0]

    return clean


class RateLimitedReport:
    """A warning in the server log per kind of trouble at most once per interval, with how many were not shown."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            if kind in self.last and now - self.last[kind] < self.interval_s:
                self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
                return
            self.last[kind] = now
            hidden = self.suppressed.pop(kind, 0)
        more = f" ({hidden} more like this in the last {self.interval_s:g} s)" if hidden else ""
        log.warning("%s%s; requests are still answered, see tuneforge_request_log_* on /metrics", message, more)
