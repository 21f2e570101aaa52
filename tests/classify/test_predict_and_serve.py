"""`tuneforge predict`, and `POST /v1/classify` on serve's main app, on a trained tiny classifier."""

from __future__ import annotations

import argparse
import io
import json
import threading
import urllib.request
from contextlib import contextmanager

import pytest
from rich.console import Console

from tests.serve.conftest import free_port, gated, http, server_thread, wait_until
from tuneforge.models.classifier import load_classifier
from tuneforge.serve.predict import add_parsers, run_predict
from tuneforge.errors import DataError, ModelError


def predict(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    console = Console(record=True, width=200, file=io.StringIO())
    code = run_predict(parser.parse_args(["predict", *argv]), console)
    return code, console.export_text()


@pytest.fixture(scope="module")
def classifier(trained_bert):
    return load_classifier(str(trained_bert.run_dir))


def test_predict_writes_labels_and_probabilities_and_scores_labelled_files(trained_bert, classifier, tmp_path,
                                                                          one_thread):
    test_file = trained_bert.run_dir.parent / "test.jsonl"
    out = tmp_path / "predictions.jsonl"
    code, printed = predict(str(trained_bert.run_dir), str(test_file), "--out", str(out))
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in test_file.read_text().splitlines()]
    assert [row["text"] for row in rows] == texts
    assert rows[0]["source"] == f"{test_file}:1"
    for row, expected in zip(rows, classifier.classify(texts)):
        assert row["label"] == expected.label and row["label"] in ("fruit", "tool", "weather")
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(row["scores"], key=row["scores"].get)
    # The same file, the same model: the accuracy printed is the one training reported for its test split.
    accuracy = json.loads((trained_bert.run_dir / "eval" / "classification.json").read_text())["tuned"]["accuracy"]
    assert f"accuracy {accuracy:.3f}" in printed


def test_predict_reads_text_lines_to_standard_output(trained_bert, tmp_path, capsys, one_thread):
    lines = tmp_path / "texts.txt"
    lines.write_text("apple banana today\n\nhammer drill\n")
    code, printed = predict(str(trained_bert.run_dir / "final"), str(lines))
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["source"] for row in rows] == [f"{lines}:1", f"{lines}:3"]
    assert "accuracy" not in printed  # no labels in the file, nothing to score


def test_predict_refuses_bad_input_and_keeps_an_existing_output(trained_bert, tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("earlier results\n")
    chat = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    chat.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=rf"{chat}:1: a chat record; predict needs a 'text' field"):
        predict(str(trained_bert.run_dir), str(chat), "--out", str(out))
    texts = tmp_path / "ok.txt"
    texts.write_text("apple\n")
    with pytest.raises(ModelError, match="no classifier here"):
        predict(str(tmp_path), str(texts), "--out", str(out))
    with pytest.raises(DataError, match="file not found"):
        predict(str(trained_bert.run_dir), str(tmp_path / "missing.jsonl"))
    assert out.read_text() == "earlier results\n"


@contextmanager
def live_server(classifier, **options):
    """(base URL, the app's ServerState): the classifier served by serve's main app on a free loopback port."""
    from tuneforge.serve.app import create_app
    from tuneforge.serve.classifier import ServedClassifier
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), **options)
    app = create_app(ServedClassifier(classifier, "runs/intents", "/somewhere"), options)
    with server_thread(app, options.port):
        yield f"http://127.0.0.1:{options.port}", app.state.server


@contextmanager
def serving(classifier, **options):
    with live_server(classifier, **options) as (url, _):
        yield url


def post(url: str, body: dict, key: str | None = None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return http(urllib.request.Request(url + "/v1/classify", data=json.dumps(body).encode(), headers=headers,
                                       method="POST"), 30)


def test_classify_endpoint_answers_labels_and_scores(classifier, one_thread):
    texts = ["apple plum today", "storm and fog", "wrench with pliers"]
    expected = classifier.classify(texts)
    with serving(classifier) as url:
        reply = post(url, {"input": texts})
        assert reply.status_code == 200
        body = reply.json()
        assert body["model"] == "runs/intents" and body["object"] == "list"
        assert [item["index"] for item in body["data"]] == [0, 1, 2]
        for item, prediction in zip(body["data"], expected):
            assert item["label"] == prediction.label and "labels" not in item
            assert item["scores"] == pytest.approx(prediction.scores, abs=1e-6)
        single = post(url, {"texts": "banana", "model": "runs/intents"}).json()["data"]
        assert len(single) == 1 and single[0]["label"] in ("fruit", "tool", "weather")

        for body, status, param in (({"input": []}, 400, "input"), ({"input": ["a"] * 257}, 400, "input"),
                                    ({"input": "a", "temprature": 1}, 400, "temprature"), ({}, 400, "input"),
                                    ({"input": "a", "threshold": 2}, 400, "threshold")):
            reply = post(url, body)
            assert reply.status_code == status, body
            assert reply.json()["error"]["param"] == param
        assert post(url, {"input": []}).json()["error"]["message"] == "input: give at least one text"
        wrong = post(url, {"input": "a", "model": "other"})
        assert wrong.status_code == 404 and "runs/intents" in wrong.json()["error"]["message"]
        models = http(urllib.request.Request(url + "/v1/models"), 30).json()
        assert [m["id"] for m in models["data"]] == ["runs/intents"]


def test_classify_endpoint_checks_api_keys(classifier, one_thread):
    with serving(classifier, api_keys=("sk-test",)) as url:
        assert post(url, {"input": "apple"}).status_code == 401
        assert post(url, {"input": "apple"}, key="sk-wrong").status_code == 401
        assert post(url, {"input": "apple"}, key="sk-test").status_code == 200


def get(url: str, path: str):
    return http(urllib.request.Request(url + path), 30)


def test_concurrent_requests_share_forward_passes_are_metered_and_logged(classifier, tmp_path, one_thread):
    """8 clients: all answered, in 2 rounds of forward passes (one request, held at the gate, then the 7 that
    queued behind it), each with its own predictions; /metrics counts them under /v1/classify and the request log has each with its labels."""
    texts = [["apple"], ["storm fog", "pliers"], ["drill today"], ["rain", "plum", "my saw"], ["banana and wind"],
             ["hammer"], ["the cloud", "a lemon"], ["snow again", "chisel", "cherry", "fog"]]
    with live_server(classifier, log_db=tmp_path / "requests.db") as (url, state):
        replies: list = [None] * len(texts)

        def client(i: int) -> None:
            replies[i] = post(url, {"input": texts[i]})

        with gated(state.engine) as gate:
            clients = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
            clients[0].start()
            wait_until(lambda: state.engine.running > 0)  # the first round holds one request at the gate
            for thread in clients[1:]:
                thread.start()
            wait_until(lambda: state.in_flight == len(texts))  # the other 7 wait for the second round
            gate.set()
            for thread in clients:
                thread.join(30)
        assert [reply.status_code for reply in replies] == [200] * len(texts)
        assert (state.engine.stats.requests, state.engine.stats.rounds) == (len(texts), 2)
        for reply, asked in zip(replies, texts):
            body = reply.json()
            assert reply.headers.get("X-Request-Id") == body["id"] and body["id"].startswith("clf")
            for item, alone in zip(body["data"], classifier.classify(asked)):
                assert item["label"] == alone.label
                assert item["scores"] == pytest.approx(alone.scores, abs=1e-5)  # other requests' padding changes nothing

        metrics = get(url, "/metrics").text
        assert f'tuneforge_requests_total{{endpoint="/v1/classify",status="200"}} {len(texts)}.0' in metrics
        assert f"tuneforge_classified_requests_total {len(texts)}.0" in metrics
        assert f"tuneforge_classified_texts_total {sum(map(len, texts))}.0" in metrics
        assert "tuneforge_classify_rounds_total 2.0" in metrics

        first = replies[1].json()
        rated = http(urllib.request.Request(url + "/v1/feedback", method="POST", headers={"Content-Type": "application/json"},
                                            data=json.dumps({"request_id": first["id"], "rating": -1,
                                                             "correction": "weather"}).encode()), 30)
        assert rated.status_code == 200  # a classify request is rated like a completion, by its id
        assert state.request_log.flush(10)
        from tuneforge.monitor.store import connect

        conn = connect(tmp_path / "requests.db", readonly=True)
        rows = {row["id"]: row for row in conn.execute("SELECT * FROM requests")}
        assert len(rows) == len(texts)
        for reply, asked in zip(replies, texts):
            body = reply.json()
            row = rows[body["id"]]
            assert (row["endpoint"], row["model"], row["status"]) == ("/v1/classify", "runs/intents", 200)
            assert [m["content"] for m in json.loads(row["messages"])] == asked
            assert [o["text"] for o in json.loads(row["outputs"])] == [item["label"] for item in body["data"]]
        assert [tuple(row) for row in conn.execute("SELECT rating, correction FROM feedback")] == [(-1, "weather")]
        conn.close()


def test_a_classifier_server_refuses_the_chat_routes_and_reports_health(classifier, one_thread):
    with serving(classifier) as url:
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"prompt": "hi"})):
            reply = http(urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                                headers={"Content-Type": "application/json"}), 30)
            assert reply.status_code == 400, path
            error = reply.json()["error"]
            assert error["code"] == "not_a_generative_model" and "/v1/classify" in error["message"]
        health = get(url, "/health").json()
        assert (health["status"], health["models"]) == ("ok", ["runs/intents"])
        assert get(url, "/v1/models/runs/intents").json()["id"] == "runs/intents"
        assert 'tuneforge_requests_total{endpoint="/v1/chat/completions",status="400"} 1.0' in get(url, "/metrics").text


def test_serve_command_serves_a_classifier_run_on_the_main_app(trained_bert, monkeypatch, one_thread):
    """`tuneforge serve RUN` of a classifier run: one app, one uvicorn start (serve/commands.py)."""
    import uvicorn

    from tuneforge.errors import ConfigError
    from tuneforge.serve.commands import add_parsers, run_serve

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    run = str(trained_bert.run_dir)
    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: started.append(server.config.app))
    console = Console(record=True, width=200, file=io.StringIO())
    port = free_port()
    assert run_serve(parser.parse_args(["serve", run, "--port", str(port), "--no-log"]), console) == 0
    monkeypatch.undo()  # the test's own server below runs uvicorn for real
    printed = console.export_text()
    assert "3 classes, single-label: fruit, tool, weather" in printed and "/v1/classify" in printed
    [app] = started
    with server_thread(app, port):
        reply = post(f"http://127.0.0.1:{port}", {"input": "banana"})
        assert reply.status_code == 200 and reply.json()["model"] == run
    with pytest.raises(ConfigError, match="is a classifier; --adapter"):
        run_serve(parser.parse_args(["serve", run, "--adapter", f"x={run}"]), console)


def test_classify_requests_meet_the_servers_limits_and_are_logged_when_refused(classifier, tmp_path, one_thread):
    with live_server(classifier, max_concurrent=1, request_timeout_s=1, log_db=tmp_path / "requests.db") as (url, state):
        replies = []
        with gated(state.engine) as gate:
            slow = threading.Thread(target=lambda: replies.append(post(url, {"input": "apple"})))
            slow.start()
            wait_until(lambda: state.in_flight == 1)
            busy = post(url, {"input": "plum"})
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_requests"
            slow.join(30)
            assert replies[0].status_code == 503 and replies[0].json()["error"]["code"] == "timeout"
            assert replies[0].headers.get("X-Request-Id", "").startswith("clf")
        assert post(url, {"input": "plum"}).status_code == 200  # the worker finished the held round and goes on
        assert state.request_log.flush(10)
        from tuneforge.monitor.store import connect, read_requests

        conn = connect(tmp_path / "requests.db", readonly=True)
        assert sorted(r.status for r in read_requests(conn)) == [200, 429, 503]
        conn.close()


def test_the_worker_finishes_what_it_holds_at_shutdown_and_refuses_more(classifier, one_thread):
    from tuneforge.serve.classifier import ClassifierWorker
    from tuneforge.serve.engine import EngineClosed

    worker = ClassifierWorker(classifier, batch_size=4)
    worker.start()
    with gated(worker) as gate:
        futures = [worker.submit([text]) for text in ("apple", "storm", "drill")]
        stopping = threading.Thread(target=worker.shutdown, args=(30,))
        stopping.start()
        wait_until(lambda: not worker.alive)
        with pytest.raises(EngineClosed):
            worker.submit(["plum"])
        gate.set()
        stopping.join(30)
    assert [f.result(5)[0].label for f in futures] == [p.label for p in classifier.classify(["apple", "storm", "drill"])]
    assert worker.shutdown(1) and worker.stats.requests == 3
