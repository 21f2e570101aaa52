"""`tuneforge monitor report` on hand-built request logs: known latencies give known percentiles,
known statuses a known error rate, known ratings a known approval; the HTML page and its charts."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import numpy as np
import pytest

from tuneforge.cli import main
from tuneforge.errors import ConfigError
from tuneforge.monitor.commands import parse_when
from tuneforge.monitor.report import build_report
from tuneforge.monitor.store import connect, read_feedback, read_requests

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc).timestamp()


def log_request(conn, request_id: str, created: float, *, messages=None, output="Fine, thanks.", status=200,
                latency=0.1, ttft=0.02, prompt_tokens=10, completion_tokens=5, model="tiny", version=None,
                endpoint="/v1/chat/completions", finish_reason="stop") -> None:
    """One row of the requests table, as the server's writer would store it."""
    messages = messages if messages is not None else [{"role": "user", "content": "How are you?"}]
    failed = status != 200
    conn.execute(
        "INSERT INTO requests (id, created, endpoint, model, model_version, messages, output, outputs, finish_reason,"
        " prompt_tokens, completion_tokens, latency_s, ttft_s, status, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (request_id, created, endpoint, model, version, json.dumps(messages), None if failed else output,
         None if failed else json.dumps([{"text": output, "finish_reason": finish_reason}]),
         None if failed else finish_reason, None if failed else prompt_tokens, None if failed else completion_tokens,
         latency, None if failed else ttft, status, f"error {status}" if failed else None))


def said(capsys) -> str:
    """What the command wrote to stderr, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def log_feedback(conn, request_id: str, rating: int, created: float, correction: str | None = None) -> None:
    conn.execute("INSERT INTO feedback (request_id, created, rating, correction) VALUES (?, ?, ?, ?)",
                 (request_id, created, rating, correction))


@pytest.fixture
def log(tmp_path):
    """v1: 100 answered requests over 10 hours, latencies 0.01..1.00 s, 10 rated (7 approved, one of them
    after a -1); v2: 10 requests, 2 of them failed (500, 503), 2 rated (1 approved, with a correction)."""
    path = tmp_path / "requests.db"
    conn = connect(path)
    for i in range(100):
        log_request(conn, f"a{i}", T0 + i * 360, latency=(i + 1) / 100, ttft=(i + 1) / 1000,
                    prompt_tokens=10 + i % 3, completion_tokens=20, version="v1")
    for i in range(10):
        status = {3: 500, 7: 503}.get(i, 200)
        log_request(conn, f"b{i}", T0 + 5 * 3600 + i * 60, latency=2.0 + i, status=status, prompt_tokens=4,
                    completion_tokens=8, version="v2")
    for i in range(10):
        log_feedback(conn, f"a{i}", 1 if i < 7 else -1, T0 + 40_000 + i)
    log_feedback(conn, "a0", -1, T0 + 39_000)  # changed their mind: the later +1 counts
    log_feedback(conn, "b0", 1, T0 + 40_000, correction="Better answer.")
    log_feedback(conn, "b1", -1, T0 + 40_001)
    conn.commit()
    conn.close()
    return path


def test_known_latencies_statuses_and_ratings_give_known_figures(log):
    conn = connect(log, readonly=True)
    report = build_report(read_requests(conn), read_feedback(conn))
    v1, v2 = report.versions
    assert (v1.name, v2.name) == ("v1", "v2")
    # numpy's linear interpolation over 0.01 .. 1.00
    assert v1.latency_s == pytest.approx({"p50": 0.505, "p90": 0.901, "p99": 0.9901})
    assert v1.ttft_s["p50"] == pytest.approx(0.0505)
    assert v1.error_rate == 0 and v1.errors == {}
    assert v1.prompt_tokens == sum(10 + i % 3 for i in range(100)) and v1.mean_completion_tokens == 20
    assert (v1.rated, v1.approved, v1.feedback_rate, v1.approval) == (10, 7, 0.1, 0.7)
    assert v2.requests == 10 and v2.answered == 8
    assert v2.errors == {"500": 1, "503": 1} and v2.error_rate == pytest.approx(0.2)
    # failed requests (latency 5 s and 9 s) are left out of the percentiles
    answered = [2.0 + i for i in range(10) if i not in (3, 7)]
    assert v2.latency_s["p50"] == pytest.approx(float(np.percentile(answered, 50)))
    assert (v2.rated, v2.approved, v2.corrected, v2.approval) == (2, 1, 1, 0.5)
    overall = report.overall
    assert overall.requests == 110 and overall.error_rate == pytest.approx(2 / 110)
    assert overall.approval == pytest.approx(8 / 12)
    # 99 * 360 s is under two days: hourly buckets, 10 v1 requests each, v2's ten in hour 5
    line = report.timeline
    assert line.bucket == "hour" and len(line.starts) == 10
    assert line.requests["v1"] == [10] * 10 and line.requests["v2"] == [0] * 5 + [10] + [0] * 4
    assert line.errors[5] == 2 and line.labels()[0] == "2025-03-01 09:00"


def test_a_span_over_two_days_is_bucketed_by_day(tmp_path):
    conn = connect(tmp_path / "requests.db")
    for day in range(4):
        for i in range(day + 1):
            log_request(conn, f"r{day}-{i}", T0 + day * 86400 + i)
    conn.commit()
    report = build_report(read_requests(conn), {})
    assert report.timeline.bucket == "day" and report.timeline.requests["tiny"] == [1, 2, 3, 4]
    assert report.timeline.labels() == ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"]


def test_the_command_prints_tables_and_writes_the_page_and_charts(log, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["monitor", "report", "--db", str(log), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Requests by model version" in printed and "v2" in printed and "20.0%" in printed
    page = (out / "index.html").read_text()
    for chart in ("traffic.png", "latency.png", "errors.png"):
        assert f'src="{chart}"' in page
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert saved["versions"][1]["error_rate"] == pytest.approx(0.2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")]  # no staging folder left


def test_since_and_until_select_a_window(log, tmp_path):
    out = tmp_path / "report"
    since = datetime.fromtimestamp(T0 + 5 * 3600, timezone.utc).isoformat()
    assert main(["monitor", "report", "--db", str(log), "--since", since, "--until", "2025-03-01T15:00:00",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["overall"]["requests"] == 10 + 10  # hour 5 of v1, and all of v2
    assert saved["timeline"]["labels"] == ["2025-03-01 14:00"]


def test_when_takes_iso_times_and_ages():
    now = 1_000_000.0
    assert parse_when("7d", "--since", now) == now - 7 * 86400
    assert parse_when("24h", "--since", now) == now - 86400
    assert parse_when("30m", "--since", now) == now - 1800
    assert parse_when("2025-03-01", "--since") == datetime(2025, 3, 1, tzinfo=timezone.utc).timestamp()
    assert parse_when("2025-03-01T10:00:00+01:00", "--since") == T0
    with pytest.raises(ConfigError, match="--since yesterday"):
        parse_when("yesterday", "--since")


def test_an_empty_log_says_so_and_exits_0(tmp_path, capsys):
    path = tmp_path / "requests.db"
    connect(path).close()
    out = tmp_path / "report"
    assert main(["monitor", "report", "--db", str(path), "--out", str(out)]) == 0
    assert "no requests logged" in said(capsys)
    assert "No requests were logged" in (out / "index.html").read_text()
    assert not (out / "traffic.png").exists()


def test_a_missing_or_foreign_file_is_a_clear_error(tmp_path, capsys):
    assert main(["monitor", "report", "--db", str(tmp_path / "nope.db")]) == 2
    assert "no request log database here" in said(capsys)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert main(["monitor", "report", "--db", str(other)]) == 2
    assert "not a tuneforge request log" in said(capsys)
    text = tmp_path / "notes.db"
    text.write_text("not a database at all\n" * 100)
    assert main(["monitor", "report", "--db", str(text)]) == 2
    assert "not a tuneforge request log" in said(capsys)
