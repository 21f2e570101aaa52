"""The dashboard's JSON endpoints over real runs, a real registry and the request log (no browser)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

from tests.dashboard.conftest import serving
from tests.serve.conftest import http

EXTERNAL = re.compile(r"""(src|href)=["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//|from\s+["']https?:""")


def get(live, path: str, key: str | None = None):
    return live.get(path, key=key)


def test_page_and_static_files_load_without_a_key(workspace, tiny_model):
    with serving(workspace, tiny_model, api_keys=("secret",)) as live:
        page = live.get("/")
        assert page.status_code == 200 and 'src="/dashboard/static/app.js"' in page.text
        from tuneforge.dashboard.routes import STATIC

        for name in ["", *(f"dashboard/static/{file}" for file in STATIC)]:
            served = live.get(f"/{name}")  # everything from this server: the page works offline
            assert served.status_code == 200 and not EXTERNAL.search(served.text), name
        assert live.get("/dashboard/static/../app.py").status_code == 404
        refused = live.get("/dashboard/api/settings")
        assert refused.status_code == 401 and refused.json()["error"]["message"]
        assert live.get("/dashboard/api/settings", key="secret").status_code == 200


def test_runs_list_detail_and_curve(board, workspace):
    listed = get(board, "/dashboard/api/runs").json()
    assert listed["root"] == str(workspace.runs)
    runs = {run["name"]: run for run in listed["runs"]}
    assert set(runs) == {"alpha", "beta"}
    assert runs["alpha"]["status"] == "finished" and runs["alpha"]["step"] == 12 and runs["alpha"]["method"] == "lora"
    detail = get(board, "/dashboard/api/run?run=alpha").json()
    steps = [point["step"] for point in detail["curve"] if "train_loss" in point]
    assert steps == list(range(1, 13))
    assert [point["step"] for point in detail["curve"] if "eval_loss" in point] == [0, 4, 8, 12]
    assert [row["label"] for row in detail["table"]] == ["validation loss"]
    row = detail["table"][0]
    assert row["change"] == row["tuned"] - row["base"] and row["better"] == (row["change"] < 0)
    assert detail["gates"] is None and detail["config"]["train"]["learning_rate"] == 1e-2
    beta = get(board, "/dashboard/api/run?run=beta").json()
    assert beta["gates"]["passed"] is False
    whole = get(board, "/dashboard/api/run/curve?run=alpha").json()
    tail = get(board, "/dashboard/api/run/curve?run=alpha&start=5").json()
    assert tail["points"] == whole["points"][5:] and tail["next"] == whole["next"] == len(whole["points"])


def test_unknown_runs_and_paths_outside_the_root_are_refused(board):
    for name in ("nope", "../runs/alpha", "/etc", "alpha/../../"):
        response = get(board, "/dashboard/api/run?run=" + urllib.parse.quote(name))
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "run_not_found"


def test_compare_from_stored_evidence(board):
    data = get(board, "/dashboard/api/compare?run=alpha&run=beta").json()
    assert data["runs"] == ["alpha", "beta"]
    assert {"key": "train.learning_rate", "values": {"alpha": 0.01, "beta": 0.03}} in data["settings"]
    assert not any(s["key"] == "train.max_steps" for s in data["settings"])
    assert set(data["curves"]) == {"alpha", "beta"} and data["validation_data"].endswith("validation.jsonl")
    assert data["table"][0]["label"] == "validation loss" and set(data["table"][0]["tuned"]) == {"alpha", "beta"}
    assert get(board, "/dashboard/api/compare?run=alpha").status_code == 400


def post(live, path: str, body: dict):
    return live.post(path, body)


def test_registry_register_promote_refusal_force_and_rollback(board, workspace):
    assert get(board, "/dashboard/api/registry").json()["versions"] == []
    assert post(board, "/dashboard/api/registry/register", {"run": "alpha"}).json()["id"] == "v1"
    assert post(board, "/dashboard/api/registry/register", {"run": "beta", "parent": "v1"}).json()["id"] == "v2"
    promoted = post(board, "/dashboard/api/registry/promote", {"version": "v1", "alias": "production"}).json()
    assert promoted["ok"] and "production: (none) -> v1" in promoted["message"]
    refused = post(board, "/dashboard/api/registry/promote", {"version": "v2", "alias": "production"}).json()
    assert not refused["ok"] and refused["exit_code"] == 3
    assert "refused" in refused["message"] and "exact_match 0.1 < 0.9" in refused["message"]
    state = get(board, "/dashboard/api/registry").json()
    assert state["aliases"] == {"production": "v1"}
    v2 = state["versions"][1]
    assert v2["lineage"] == ["v2", "v1"] and v2["gate_outcome"] == "failed" and v2["gates"][0]["passed"] is False
    forced = post(board, "/dashboard/api/registry/promote", {"version": "v2", "alias": "production", "force": True})
    assert forced.json()["ok"] and "forced past failed gates" in forced.json()["message"]
    back = post(board, "/dashboard/api/registry/rollback", {"alias": "production"}).json()
    assert back == {"ok": True, "message": "production: v2 -> v1 (rolled back)", "from": "v2", "to": "v1"}
    assert [e["action"] for e in get(board, "/dashboard/api/registry").json()["history"]] == \
        ["promote", "promote", "rollback"]
    missing = post(board, "/dashboard/api/registry/promote", {"version": "v9", "alias": "production"})
    assert missing.status_code == 404 and "v9" in missing.json()["error"]["message"]


def test_monitoring_report_and_drift_after_rated_traffic(board):
    client = board.client()
    for i in range(3):
        answer = client.chat.completions.create(model="alpha", max_tokens=4,
                                                messages=[{"role": "user", "content": f"What is {i} plus {i}?"}])
        assert board.post("/v1/feedback", {"request_id": answer.id, "rating": 1 if i else -1}).status_code == 200
    deadline = time.monotonic() + 10
    while (report := get(board, "/dashboard/api/monitor/report?since=1h").json())["requests"] < 3:
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["overall"]["rated"] == 3 and report["overall"]["approved"] == 2
    assert "approval (+1)" in report["rows"] and report["columns"] == ["alpha"]
    assert sum(report["timeline"]["requests"]["alpha"]) == 3
    drift = get(board, "/dashboard/api/monitor/drift?run=alpha").json()
    assert drift["production_prompts"] == 3 and drift["training_prompts"] == 24
    assert [s["signal"] for s in drift["signals"]] == ["length", "vocabulary"] and "surprise" in drift["skipped"]


def test_inspect_an_uploaded_file_names_the_bad_line(board, tiny_model):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    content = "\n".join([good, good, "{not json", good]).encode()
    query = urllib.parse.urlencode({"filename": "mine.jsonl", "max_seq_length": 64})
    request = urllib.request.Request(f"{board.url}/dashboard/api/inspect?{query}", data=content, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    result = http(request, 60).json()
    assert result["records"] == 3 and result["duplicates"] == 2 and result["format"] == "chat"
    assert result["model"] == str(tiny_model) and result["roles"] == {"user": 3, "assistant": 3}
    assert result["problem_count"] == 1 and result["problems"][0]["where"].startswith("mine.jsonl:3")
    empty = http(urllib.request.Request(f"{board.url}/dashboard/api/inspect", data=b"", method="POST"), 30)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]


def test_compare_evaluation_runs_tuneforge_compare_in_its_own_process(board, workspace):
    started = post(board, "/dashboard/api/compare", {"runs": ["alpha", "beta"], "data": str(workspace.validation),
                                                     "limit": 2, "max_new_tokens": 4})
    assert started.status_code == 200 and started.json()["status"] == "running"
    deadline = time.monotonic() + 240
    while (found := get(board, "/dashboard/api/compare/evaluations").json()["evaluations"][0])["status"] == "running":
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    assert found["status"] == "done", found.get("log")
    assert found["models"] == ["alpha", "beta"] and found["runs"] == ["alpha", "beta"]
    metrics = {row["metric"]: row for row in found["rows"]}
    assert "loss" in metrics and metrics["loss"]["directions"][0] == ""  # the first model is the reference
    assert found["report"]
    report = get(board, f"/dashboard/api/compare/{found['id']}/report/index.html")
    assert report.status_code == 200 and "<img" in report.text
    assert get(board, f"/dashboard/api/compare/{found['id']}/report/..%2Fsummary.json").status_code == 404
    missing = post(board, "/dashboard/api/compare", {"runs": ["alpha", "beta"], "data": "/no/such.jsonl"})
    assert missing.status_code == 400 and "/no/such.jsonl" in missing.json()["error"]["message"]
