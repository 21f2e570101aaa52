"""The production loop on a tiny random model: serve production, log requests, take feedback, curate,
retrain from production, gate, promote, the server follows; rollback restores the old version."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

from tests.conftest import chat_records, write_jsonl
from tests.serve.conftest import wait_until
from tests.serve.test_live_registry import serving
from tuneforge.cli import main
from tuneforge.monitor.store import connect, read_feedback, read_requests
from tuneforge.registry.store import aliases, get_version, open_registry

QUICK = {"train.max_steps": 3, "eval.general_check": False, "eval.max_new_tokens": 8, "checkpoint.every_steps": 100}


def version_of(live) -> str:
    [card] = [c for c in live.client().models.list().data if c.id == "production"]  # a LoRA run serves its base too
    return card.version


def test_serve_feedback_curate_retrain_promote_rollback(run_config, tmp_path, one_thread, capsys):
    # v1: a LoRA fine-tune, registered and promoted to production.
    run = tmp_path / "v1"
    assert main(["train", str(run_config(**{**QUICK, "output_dir": str(run)}))]) == 0
    registry = tmp_path / "registry.db"
    assert main(["models", "register", str(run), "--promote", "production", "--registry", str(registry)]) == 0
    log = tmp_path / "requests.db"
    # Users ask the questions the validation set holds (what the model should learn), and correct its answers.
    questions = [r["messages"][0]["content"] for r in chat_records(60)[30:]]
    answers = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in chat_records(60)[30:]}

    with serving(registry, log_db=log) as live:
        client = live.client()
        assert version_of(live) == "v1"
        ids = []
        for question in questions:
            response = client.chat.completions.create(model="production", max_tokens=8, temperature=0,
                                                      messages=[{"role": "user", "content": question}])
            assert response.system_fingerprint == "v1"
            ids.append(response.id)
        for request_id, question in zip(ids, questions):
            reply = live.post("/v1/feedback", {"request_id": request_id, "rating": -1, "correction": answers[question]})
            assert reply.status_code == 200, reply.text
        assert live.post("/v1/feedback", {"request_id": "chatcmpl-unknown", "rating": 1}).status_code == 404

        # Every request and its feedback is in the log (written in the background: wait for the last one).
        def logged() -> bool:
            with closing(connect(log, readonly=True)) as conn:
                return len(read_feedback(conn)) == len(ids)

        wait_until(logged, timeout=30)
        with closing(connect(log, readonly=True)) as conn:
            rows = {r.id: r for r in read_requests(conn)}
        assert set(ids) <= set(rows) and {rows[i].model_version for i in ids} == {"v1"}
        assert rows[ids[0]].messages == [{"role": "user", "content": questions[0]}]

        # Curate: each correction becomes a chat record (and, with the rejected answer, a preference pair).
        curated = tmp_path / "curated.jsonl"
        assert main(["curate", "--db", str(log), "--out", str(curated)]) == 0
        records = [json.loads(line) for line in curated.read_text().splitlines()]
        assert len(records) == len(questions)
        assert {r["messages"][-1]["content"] for r in records} == set(answers.values())
        assert (tmp_path / "curated.preference.jsonl").is_file()

        # Retrain from production on the curated data: it wins, is registered as v2 and promoted.
        retrained = tmp_path / "v2"
        code = main(["retrain", "--from", "production", "--data", str(curated), "--registry", str(registry),
                     "--output-dir", str(retrained), "--gate", "loss <= base", "--set", "train.max_steps=6"])
        assert code == 0, capsys.readouterr().err
        conn = open_registry(registry, create=False)
        assert aliases(conn)["production"] == "v2" and get_version(conn, "v2").parent == "v1"

        # The running server follows the promotion: /v1/models and the responses name v2.
        wait_until(lambda: version_of(live) == "v2", timeout=60)
        response = client.chat.completions.create(model="production", max_tokens=4, temperature=0,
                                                  messages=[{"role": "user", "content": questions[0]}])
        assert response.system_fingerprint == "v2"

        # Rollback restores v1 without a restart.
        assert main(["models", "rollback", "--registry", str(registry)]) == 0
        wait_until(lambda: version_of(live) == "v1", timeout=60)
        response = client.chat.completions.create(model="production", max_tokens=4, temperature=0,
                                                  messages=[{"role": "user", "content": questions[0]}])
        assert response.system_fingerprint == "v1"
        conn.close()

    # The rejected answers with their corrections train by preference (DPO, production's log-probs the
    # reference): the curated pairs are the retrain's training data, and it is gated and promoted like any retrain.
    pairs = [json.loads(line) for line in (tmp_path / "curated.preference.jsonl").read_text().splitlines()]
    assert {p["chosen"][-1]["content"] if isinstance(p["chosen"], list) else p["chosen"] for p in pairs} == set(answers.values())
    by_preference = tmp_path / "v3"
    code = main(["retrain", "--from", "production", "--data", str(curated), "--data",
                 str(tmp_path / "curated.preference.jsonl"), "--registry", str(registry), "--output-dir",
                 str(by_preference), "--gate", "loss <= base", "--set", "train.max_steps=6",
                 "--set", "preference.sft_weight=1.0"])
    assert code == 0, capsys.readouterr().err
    run_file = (by_preference / "config.yaml").read_text()
    assert "task: preference" in run_file and "reference: precomputed" in run_file
    assert json.loads((by_preference / "data_manifest.json").read_text())["train_records"] == len(pairs)
    metrics = [json.loads(line) for line in (by_preference / "metrics.jsonl").read_text().splitlines()]
    assert any("train_reward_accuracy" in m for m in metrics)
    conn = open_registry(registry, create=False)
    assert aliases(conn)["production"] == "v3" and get_version(conn, "v3").parent == "v1"
    conn.close()


def test_a_locked_log_does_not_fail_requests(run_config, tmp_path, one_thread):
    run = tmp_path / "v1"
    assert main(["train", str(run_config(**{**QUICK, "output_dir": str(run)}))]) == 0
    registry = tmp_path / "registry.db"
    assert main(["models", "register", str(run), "--promote", "production", "--registry", str(registry)]) == 0
    log = tmp_path / "requests.db"
    connect(log).close()
    blocker = sqlite3.connect(log, timeout=0.1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with serving(registry, log_db=log) as live:
            response = live.client().chat.completions.create(
                model="production", max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi"}])
            assert response.choices[0].message.content is not None
            wait_until(lambda: _failures(live.get("/metrics").text) >= 1, timeout=30)
    finally:
        blocker.rollback()
        blocker.close()


def _failures(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("tuneforge_request_log_failures_total "):
            return float(line.split()[1])
    return 0.0
