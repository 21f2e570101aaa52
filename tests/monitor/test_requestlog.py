"""The request log's writer on its own: records and feedback in order, retention, redaction, and every way the
database can fail (locked, read-only, full, unopenable) being counted instead of raised."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time

import pytest

from tuneforge.monitor import requestlog
from tuneforge.monitor.requestlog import (
    DAY_S, FeedbackRecord, LogSettings, LogUnavailable, Output, RequestLog, RequestRecord, prune,
)
from tuneforge.monitor.store import connect, read_feedback, read_requests


def record(ident: str, created: float | None = None, text: str = "four", **fields) -> RequestRecord:
    values = dict(id=ident, created=time.time() if created is None else created, endpoint="/v1/chat/completions",
                  model="tiny", model_version="v1", messages=[{"role": "user", "content": "2+2?"}],
                  outputs=(Output(text, "stop"),), prompt_tokens=5, completion_tokens=1, latency_s=0.5, ttft_s=0.1)
    return RequestRecord(**{**values, **fields})


@pytest.fixture
def started():
    logs = []

    def start(path, **settings) -> RequestLog:
        request_log = RequestLog(LogSettings(path, **settings))
        request_log.start()
        logs.append(request_log)
        return request_log

    yield start
    for request_log in logs:
        request_log.close(10)


def rows(path) -> list:
    conn = connect(path, readonly=True)
    try:
        return read_requests(conn)
    finally:
        conn.close()


def test_records_and_feedback_are_written_in_queue_order(tmp_path):
    path = tmp_path / "logs" / "requests.db"  # the directory is created
    request_log = RequestLog(LogSettings(path))
    request_log.submit(record("chatcmpl-1", outputs=(Output("four", "stop"), Output("4", "length"))))
    # Feedback on a record that is still queued (the writer has not even started): it is written after the record.
    feedback = request_log.add_feedback(FeedbackRecord("chatcmpl-1", -1, correction="4", comment="terse"))
    unknown = request_log.add_feedback(FeedbackRecord("chatcmpl-unknown", 1))
    assert not feedback.done()
    request_log.start()
    assert isinstance(feedback.result(10), int)
    assert unknown.result(10) is None
    request_log.submit(record("cmpl-2", endpoint="/v1/completions", messages=[{"role": "prompt", "content": "Once"}],
                              status=503, error="timeout", outputs=(), completion_tokens=None, ttft_s=None))
    assert request_log.flush(10)
    first, second = rows(path)
    assert (first.id, first.endpoint, first.model, first.model_version) == ("chatcmpl-1", "/v1/chat/completions",
                                                                           "tiny", "v1")
    assert first.messages == [{"role": "user", "content": "2+2?"}] and first.output == "four"
    assert (first.finish_reason, first.prompt_tokens, first.completion_tokens, first.status) == ("stop", 5, 1, 200)
    assert (first.latency_s, first.ttft_s, first.error) == (0.5, 0.1, None)
    assert (second.status, second.error, second.output, second.finish_reason) == (503, "timeout", None, None)
    conn = connect(path, readonly=True)
    outputs = conn.execute("SELECT outputs FROM requests WHERE id = 'chatcmpl-1'").fetchone()[0]
    assert json.loads(outputs) == [{"text": "four", "finish_reason": "stop"}, {"text": "4", "finish_reason": "length"}]
    [stored] = read_feedback(conn)["chatcmpl-1"]
    assert (stored.rating, stored.correction, stored.comment) == (-1, "4", "terse")
    stats = request_log.snapshot()
    assert (stats.written, stats.feedback, stats.failures, sum(stats.dropped.values())) == (2, 1, 0, 0)
    assert request_log.close(10)


def seed(path, created: dict[str, float], feedback_on: list[str]) -> None:
    conn = connect(path)
    with conn:
        for ident, when in created.items():
            conn.execute("INSERT INTO requests (id, created, endpoint, model, messages, status) "
                         "VALUES (?, ?, '/v1/completions', 'tiny', '[]', 200)", (ident, when))
        for ident in feedback_on:
            conn.execute("INSERT INTO feedback (request_id, created, rating) VALUES (?, ?, 1)", (ident, created[ident]))
    conn.close()


def test_retention_deletes_old_rows_then_the_oldest_beyond_max_rows_and_their_feedback_only(tmp_path):
    now = 1_000 * DAY_S
    ages = {"a": 40, "b": 31, "c": 29.9, "d": 20, "e": 10, "f": 5, "g": 1}  # days
    path = tmp_path / "requests.db"
    seed(path, {ident: now - days * DAY_S for ident, days in ages.items()}, feedback_on=["a", "c", "d", "g"])
    conn = connect(path)
    assert prune(conn, retention_days=30, max_rows=3, now=now) == 4  # a, b by age; c, d beyond the 3 newest
    assert [r.id for r in read_requests(conn)] == ["e", "f", "g"]
    assert set(read_feedback(conn)) == {"g"}  # feedback went with its request; g's stayed
    assert prune(conn, retention_days=30, max_rows=3, now=now) == 0  # nothing else goes
    assert prune(conn, retention_days=7, max_rows=1_000, now=now) == 1  # e
    assert [r.id for r in read_requests(conn)] == ["f", "g"]
    conn.close()


def test_retention_is_applied_at_start_and_every_n_writes(tmp_path, started):
    path = tmp_path / "requests.db"
    old = time.time() - 60 * DAY_S
    seed(path, {"old": old, "recent": time.time() - 3600}, feedback_on=["old", "recent"])
    request_log = started(path, retention_days=30, max_rows=3, prune_every=3)
    assert request_log.flush(10)
    assert [r.id for r in rows(path)] == ["recent"]
    for i in range(5):
        request_log.submit(record(f"r{i}", created=time.time() - 100 + i))
        assert request_log.flush(10)
    # The 3rd write after the start's pass triggers a pass (4 rows: "recent" goes); the 2 later writes wait for the next
    assert [r.id for r in rows(path)] == ["r0", "r1", "r2", "r3", "r4"]
    assert request_log.snapshot().pruned == 2  # "old" at start, "recent" at the pass after r2
    conn = connect(path, readonly=True)
    assert read_feedback(conn) == {}
    conn.close()


def test_redaction_before_anything_is_written(tmp_path, started):
    path = tmp_path / "requests.db"
    request_log = started(path, redact_pii=True)
    pii = "write to jane.doe@example.com or call 415-555-0134"
    request_log.submit(record("r1", messages=[{"role": "user", "content": pii}], outputs=(Output(pii, "stop"),)))
    request_log.add_feedback(FeedbackRecord("r1", -1, correction=pii, comment=pii)).result(10)
    request_log.close(10)
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("requests.db-*"))
    assert b"jane.doe" not in raw and b"555-0134" not in raw
    [logged] = rows(path)
    assert logged.messages[0]["content"] == logged.output == "write to <EMAIL> or call <PHONE>"
    conn = connect(path, readonly=True)
    [stored] = read_feedback(conn)["r1"]
    assert stored.correction == stored.comment == "write to <EMAIL> or call <PHONE>"


def test_a_locked_database_counts_failures_and_recovers(tmp_path, started, caplog):
    path = tmp_path / "requests.db"
    seed(path, {"known": time.time()}, feedback_on=[])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    request_log = started(path, busy_timeout_s=0.1)
    started_at = time.monotonic()
    for i in range(3):
        request_log.submit(record(f"r{i}"))  # never blocks
    assert time.monotonic() - started_at < 0.1
    assert request_log.flush(20)
    stats = request_log.snapshot()
    assert stats.failures >= 1 and stats.dropped["write_failed"] == 3 and stats.written == 0
    with pytest.raises(LogUnavailable, match="locked"):
        request_log.add_feedback(FeedbackRecord("known", 1)).result(10)
    assert "database is locked" in caplog.text and "requests are still answered" in caplog.text
    holder.execute("ROLLBACK")
    holder.close()
    request_log.submit(record("after"))
    assert request_log.flush(10)
    assert [r.id for r in rows(path)] == ["known", "after"]


def make_read_only(path) -> None:
    """A read-only database file: chmod, and (for root, whom chmod does not stop) SQLite's own read-only mark,
    a file-format write version above 2 (header byte 18), which makes SQLite refuse every write."""
    header = bytearray(path.read_bytes())
    header[18] = 3
    path.write_bytes(bytes(header))
    os.chmod(path, 0o444)


def test_a_read_only_database_counts_failures(tmp_path, started, caplog):
    path = tmp_path / "requests.db"
    connect(path).close()
    make_read_only(path)
    request_log = started(path)
    request_log.submit(record("r1"))
    assert request_log.flush(10)
    stats = request_log.snapshot()
    assert stats.failures >= 2 and stats.dropped["write_failed"] == 1  # at start, and again for the record
    assert "readonly database" in caplog.text


def test_a_full_disk_counts_failures(tmp_path, started, monkeypatch):
    """SQLITE_FULL, as on a full disk: the writer's connection may not grow the file beyond its current pages."""
    real_connect = requestlog.connect

    def capped(path, **kwargs):
        conn = real_connect(path, **kwargs)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(requestlog, "connect", capped)
    path = tmp_path / "requests.db"
    request_log = started(path)
    request_log.submit(record("big", messages=[{"role": "user", "content": "x" * 50_000}]))
    assert request_log.flush(10)
    stats = request_log.snapshot()
    assert stats.failures == 1 and stats.dropped["write_failed"] == 1 and stats.written == 0


def test_a_path_that_cannot_be_created_counts_failures(tmp_path, started):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    request_log = started(blocker / "requests.db")
    request_log.submit(record("r1"))
    assert request_log.flush(10)
    assert request_log.snapshot().failures == 2 and request_log.snapshot().dropped["write_failed"] == 1
    with pytest.raises(LogUnavailable, match="cannot be opened"):
        request_log.add_feedback(FeedbackRecord("r1", 1)).result(10)


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    request_log = RequestLog(LogSettings(tmp_path / "requests.db", queue_size=2))  # writer not started yet
    for i in range(5):
        request_log.submit(record(f"r{i}"))
    with pytest.raises(LogUnavailable, match="queue is full"):
        request_log.add_feedback(FeedbackRecord("r0", 1)).result(1)
    assert request_log.snapshot().dropped["queue_full"] == 3
    request_log.start()
    assert request_log.close(10)  # what was queued is written before the writer stops
    assert [r.id for r in rows(tmp_path / "requests.db")] == ["r0", "r1"]
    request_log.submit(record("late"))
    assert request_log.snapshot().dropped == {"queue_full": 3, "write_failed": 0, "closed": 1}
    with pytest.raises(LogUnavailable, match="shutting down"):
        request_log.add_feedback(FeedbackRecord("r0", 1)).result(1)


def test_trouble_is_reported_at_most_once_per_interval(caplog):
    report = requestlog.RateLimitedReport(interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="tuneforge.serve"):
        for _ in range(50):
            report("failure", "request log: writing failed")
        report("queue_full", "request log: queue full")
        time.sleep(0.25)
        report("failure", "request log: writing failed")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "49 more like this" in lines[2]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="log_retention_days"):
        LogSettings("x.db", retention_days=0)
    with pytest.raises(ValueError, match="log_max_rows"):
        LogSettings("x.db", max_rows=0)
