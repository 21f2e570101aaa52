"""`tuneforge predict` and `POST /v1/classify` on a trained tiny classifier."""

from __future__ import annotations

import argparse
import io
import json
import urllib.request
from contextlib import contextmanager

import pytest
from rich.console import Console

from tests.serve.conftest import free_port, http, server_thread
from tuneforge.classify.model import load_classifier
from tuneforge.classify.predict import add_parsers, run_predict
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
def serving(classifier, **options):
    from tuneforge.classify.route import ServedClassifier, create_classify_app
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), **options)
    app = create_classify_app(ServedClassifier(classifier, "runs/intents", "/somewhere"), options)
    with server_thread(app, options.port):
        yield f"http://127.0.0.1:{options.port}"


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
