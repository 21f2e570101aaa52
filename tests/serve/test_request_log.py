"""The request log through a live server: every completion (answered, streamed, refused, failed) is logged under the id
its client got, feedback is stored beside it, and a broken log database never fails a request."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import openai
import pytest

from tests.monitor.test_requestlog import make_read_only, seed
from tests.serve.conftest import chat, gated, running, sse_payloads, wait_until
from tests.serve.test_commands import parse
from tuneforge.errors import ConfigError
from tuneforge.monitor.requestlog import DEFAULT_LOG_DB, LogSettings
from tuneforge.monitor.store import connect, read_feedback, read_requests
from tuneforge.serve import options as options_module
from tuneforge.serve.commands import describe, options_from

QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]
VERSION = "v-test-7"


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("request-log") / "requests.db"


@pytest.fixture(scope="module")
def live(tiny_served, path):
    served = replace(tiny_served, version=VERSION)  # as when serving a registry version (the same weights)
    with running(served, log_db=path, max_prompt_tokens=60) as live:
        yield live


def logged(live, path, ident: str) -> dict:
    assert live.state.request_log.flush(10)
    conn = connect(path, readonly=True)
    try:
        row = conn.execute("SELECT * FROM requests WHERE id = ?", (ident,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"{ident} was not logged"
    return dict(row)


def metric(live, name: str) -> float:
    lines = [line for line in live.get("/metrics").text.splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_an_answer_is_logged_under_the_id_its_client_got(live, path, tiny_served):
    before = time.time()
    raw = live.client().chat.completions.with_raw_response.create(model=tiny_served.default, messages=QUESTION,
                                                                   max_tokens=6, temperature=0)
    answer = raw.parse()
    assert answer.id.startswith("chatcmpl-") and raw.headers["x-request-id"] == answer.id
    row = logged(live, path, answer.id)
    assert (row["endpoint"], row["model"], row["model_version"]) == ("/v1/chat/completions", tiny_served.default,
                                                                     VERSION)
    assert json.loads(row["messages"]) == QUESTION
    assert row["output"] == answer.choices[0].message.content
    assert row["finish_reason"] == answer.choices[0].finish_reason
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.usage.prompt_tokens,
                                                                answer.usage.completion_tokens)
    assert (row["status"], row["error"]) == (200, None)
    assert before <= row["created"] <= time.time()
    assert 0 < row["ttft_s"] <= row["latency_s"] < 30


def test_a_stream_is_logged_under_the_id_of_its_chunks(live, path, tiny_served):
    raw = live.client().chat.completions.with_raw_response.create(model=tiny_served.default, messages=QUESTION,
                                                                   max_tokens=8, temperature=0, stream=True)
    chunks = list(raw.parse())
    ident = raw.headers["x-request-id"]
    assert {c.id for c in chunks} == {ident}
    row = logged(live, path, ident)
    assert row["output"] == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert row["finish_reason"] == [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert row["status"] == 200 and row["model_version"] == VERSION
    assert 1 <= row["completion_tokens"] <= 8 and 0 < row["ttft_s"] <= row["latency_s"]


def test_text_completions_log_each_prompt_and_choice(live, path, tiny_served):
    answer = live.client().completions.create(model=tiny_served.default, prompt=["Once upon", "The sky"], max_tokens=3,
                                              temperature=0)
    row = logged(live, path, answer.id)
    assert answer.id.startswith("cmpl-") and row["endpoint"] == "/v1/completions"
    assert json.loads(row["messages"]) == [{"role": "prompt", "content": "Once upon"},
                                           {"role": "prompt", "content": "The sky"}]
    assert [o["text"] for o in json.loads(row["outputs"])] == [c.text for c in answer.choices]
    raw = live.post("/v1/completions", {"prompt": "Once", "max_tokens": 3, "stream": True})
    ident = raw.headers["x-request-id"]
    assert {p["id"] for p in sse_payloads(raw.text)} == {ident}
    assert logged(live, path, ident)["output"] == "".join(p["choices"][0]["text"] for p in sse_payloads(raw.text))


def test_refusals_are_logged_with_their_status_and_the_id_in_a_header(live, path, tiny_served):
    client = live.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=tiny_served.default, messages=[{"role": "user", "content": "word " * 100}])
    assert caught.value.code == "context_length_exceeded"
    row = logged(live, path, caught.value.response.headers["x-request-id"])
    assert (row["status"], row["output"], row["finish_reason"]) == (400, None, None)
    assert "at most 60" in row["error"] and row["prompt_tokens"] > 60
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    row = logged(live, path, caught.value.response.headers["x-request-id"])
    assert (row["status"], row["model"]) == (404, "no-such-model")
    invalid = live.post("/v1/chat/completions", {"messages": QUESTION, "temprature": 1})
    assert invalid.status_code == 400 and "x-request-id" not in invalid.headers  # never parsed: not a request yet


def test_feedback_right_after_the_answer_is_stored_beside_it(live, path, tiny_served):
    client = live.client()
    answer = client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=4)
    receipt = live.post("/v1/feedback", {"request_id": answer.id, "rating": -1, "correction": "4", "comment": "short"})
    assert receipt.status_code == 200, receipt.text
    body = receipt.json()
    assert (body["object"], body["request_id"], body["rating"]) == ("feedback", answer.id, -1)
    streamed = live.post("/v1/chat/completions", chat("hi", max_tokens=3, stream=True))
    ident = streamed.headers["x-request-id"]
    assert live.post("/v1/feedback", {"request_id": ident, "rating": 1}).status_code == 200
    conn = connect(path, readonly=True)
    feedback = read_feedback(conn)
    conn.close()
    [stored] = feedback[answer.id]
    assert (stored.rating, stored.correction, stored.comment) == (-1, "4", "short")
    assert [f.rating for f in feedback[ident]] == [1]
    assert metric(live, "tuneforge_request_log_feedback_total") >= 2


@pytest.mark.parametrize("body,status,param,code", [
    ({"request_id": "chatcmpl-nope", "rating": 1}, 404, "request_id", "request_not_found"),
    ({"request_id": "x", "rating": 0}, 400, "rating", "invalid_value"),
    ({"request_id": "x", "rating": 2}, 400, "rating", "invalid_value"),
    ({"request_id": "x", "rating": "1"}, 400, "rating", "invalid_value"),
    ({"request_id": "x", "rating": True}, 400, "rating", "invalid_value"),
    ({"rating": 1}, 400, "request_id", "invalid_value"),
    ({"request_id": "x", "rating": 1, "stars": 5}, 400, "stars", "unsupported_field"),
])
def test_bad_feedback_is_refused_naming_the_field(live, body, status, param, code):
    response = live.post("/v1/feedback", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_overload_timeouts_and_failures_are_logged(tiny_served, tmp_path):
    path = tmp_path / "requests.db"
    with running(tiny_served, log_db=path, max_concurrent=1, request_timeout_s=1.0) as live:
        client, model = live.client(), tiny_served.default
        caught = {}

        def ask():
            try:
                client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3)
            except openai.APIStatusError as exc:
                caught["timeout"] = exc

        with gated(live.engine):
            thread = threading.Thread(target=ask)
            thread.start()
            wait_until(lambda: live.state.in_flight == 1)
            with pytest.raises(openai.RateLimitError) as busy:
                client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3)
            thread.join(30)
        wait_until(lambda: live.state.in_flight == 0)
        assert logged(live, path, busy.value.response.headers["x-request-id"])["status"] == 429
        timeout = logged(live, path, caught["timeout"].response.headers["x-request-id"])
        assert (timeout["status"], timeout["output"]) == (503, None) and "timeout" in timeout["error"]
        with gated(live.engine):
            stream = live.post("/v1/chat/completions", chat("hi", max_tokens=3, stream=True))
        assert sse_payloads(stream.text)[-1]["error"]["code"] == "timeout"
        wait_until(lambda: live.state.in_flight == 0)
        assert logged(live, path, stream.headers["x-request-id"])["status"] == 503

        forward = live.engine._forward
        live.engine._forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated failure"))
        try:
            failed = live.post("/v1/chat/completions", chat("hi", max_tokens=3))
        finally:
            live.engine._forward = forward
        assert failed.status_code == 500
        row = logged(live, path, failed.headers["x-request-id"])
        assert row["status"] == 500 and "simulated failure" in row["error"]


def test_a_stream_the_client_leaves_is_logged_as_499(live, path, tiny_served):
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    with gated(live.engine):  # no token comes before the client leaves
        connection.request("POST", "/v1/chat/completions", json.dumps(chat("hi", max_tokens=5, stream=True)),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        ident = response.headers["x-request-id"]
        assert response.readline().startswith(b"data: ")  # the role chunk
        connection.close()
        wait_until(lambda: live.state.in_flight == 0)
    row = logged(live, path, ident)
    assert (row["status"], row["finish_reason"]) == (499, None) and "disconnected" in row["error"]


@pytest.fixture
def short_busy_timeout(monkeypatch):
    """Writes give up on a lock after 0.2 s instead of 5, so the test does not wait."""
    monkeypatch.setattr(options_module, "LogSettings", partial(LogSettings, busy_timeout_s=0.2))


def test_a_locked_log_database_does_not_fail_requests(tiny_served, tmp_path, short_busy_timeout):
    path = tmp_path / "requests.db"
    seed(path, {"earlier": time.time()}, feedback_on=[])
    holder = connect(path)
    holder.isolation_level = None
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    with running(tiny_served, log_db=path) as live:
        client = live.client()
        answer = client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        assert answer.choices[0].message.content is not None
        chunks = list(client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3,
                                                     stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert live.state.request_log.flush(10)
        assert metric(live, "tuneforge_request_log_failures_total") >= 1
        assert metric(live, 'tuneforge_request_log_dropped_total{reason="write_failed"}') == 2
        unavailable = live.post("/v1/feedback", {"request_id": "earlier", "rating": 1})
        assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "request_log_unavailable"
        holder.execute("ROLLBACK")
        later = client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        assert logged(live, path, later.id)["status"] == 200  # the log recovers once the lock is gone
    holder.close()


def test_a_read_only_log_database_does_not_fail_requests(tiny_served, tmp_path, caplog):
    path = tmp_path / "requests.db"
    seed(path, {"earlier": time.time()}, feedback_on=[])
    make_read_only(path)
    with running(tiny_served, log_db=path) as live:
        answer = live.client().chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        assert answer.choices[0].message.content is not None
        assert live.state.request_log.flush(10)
        assert metric(live, "tuneforge_request_log_failures_total") >= 2  # opening at start, and for the record
        assert metric(live, 'tuneforge_request_log_dropped_total{reason="write_failed"}') == 1
        unavailable = live.post("/v1/feedback", {"request_id": "earlier", "rating": 1})
        assert unavailable.status_code == 503 and "readonly" in unavailable.json()["error"]["message"]
    assert "readonly database" in caplog.text and "requests are still answered" in caplog.text


def test_no_log_writes_no_file_and_refuses_feedback(tiny_served, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert options_from(parse("m")).log_db == Path(DEFAULT_LOG_DB)  # on by default, in the current directory
    options = options_from(parse("m", "--no-log"))
    assert options.log_db is None
    assert "request log: off" in describe(tiny_served, options)
    with running(tiny_served, log_db=options.log_db) as live:
        answer = live.client().chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        refused = live.post("/v1/feedback", {"request_id": answer.id, "rating": 1})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "request_log_off"
        assert "tuneforge_request_log" not in live.get("/metrics").text
    assert list(tmp_path.iterdir()) == []
    with running(tiny_served, log_db=options_from(parse("m")).log_db) as live:
        answer = live.client().chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
    conn = connect(tmp_path / DEFAULT_LOG_DB, readonly=True)  # written at shutdown at the latest
    assert conn.execute("SELECT id FROM requests").fetchall()[0][0] == answer.id
    conn.close()


def test_pii_is_redacted_before_it_is_written(tiny_served, tmp_path):
    path = tmp_path / "requests.db"
    pii = "I am jane.doe@example.com, call me on 415-555-0134"
    with running(tiny_served, log_db=path, log_redact_pii=True) as live:
        answer = live.client().chat.completions.create(model=tiny_served.default, max_tokens=3,
                                                       messages=[{"role": "user", "content": pii}])
        receipt = live.post("/v1/feedback", {"request_id": answer.id, "rating": -1, "correction": pii})
        assert receipt.status_code == 200
    # no flush: the server's shutdown wrote what was queued
    conn = connect(path, readonly=True)
    [message] = json.loads(conn.execute("SELECT messages FROM requests").fetchone()[0])
    assert message["content"] == "I am <EMAIL>, call me on <PHONE>"
    assert read_feedback(conn)[answer.id][0].correction == "I am <EMAIL>, call me on <PHONE>"
    conn.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"jane.doe" not in stored and b"555-0134" not in stored


def test_log_flags_become_options_and_the_startup_line(tiny_served, tmp_path):
    options = options_from(parse("m", "--log-db", str(tmp_path / "logs.db"), "--log-retention-days", "7",
                                 "--log-max-rows", "500", "--log-redact-pii"))
    assert (options.log_db, options.log_retention_days, options.log_max_rows, options.log_redact_pii) == (
        tmp_path / "logs.db", 7, 500, True)
    line = describe(tiny_served, options).splitlines()[-1]
    assert str(tmp_path / "logs.db") in line and "7 days" in line and "500 requests" in line and "PII" in line
    with pytest.raises(ConfigError, match="log_max_rows"):
        options_from(parse("m", "--log-max-rows", "0"))
    with pytest.raises(ConfigError, match="log_retention_days"):
        options_from(parse("m", "--log-retention-days", "-1"))


def test_the_server_recreates_a_removed_log_and_reports_the_gap(tiny_served, tmp_path):
    path = tmp_path / "logs" / "requests.db"
    with running(tiny_served, log_db=path) as live:
        client = live.client()
        client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=2)
        assert live.state.request_log.flush(10)
        shutil.rmtree(tmp_path / "logs")
        answer = client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=2)
        assert live.state.request_log.flush(10)
        assert [r.id for r in read_requests(connect(path, readonly=True))] == [answer.id]
        assert metric(live, "tuneforge_request_log_reopened_total") == 1
        assert metric(live, "tuneforge_request_log_lost_total") == 1
        assert metric(live, "tuneforge_request_log_failures_total") == 1
