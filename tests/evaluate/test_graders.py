"""Each grader shape scored with OpenAI's documented semantics; score_model against a fake local endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from pydantic import TypeAdapter

from tuneforge.config.rewards import Grader
from tuneforge.errors import ConfigError
from tuneforge.evaluate.graders import build_grader, render

ITEM = {"answer": "Paris", "meta": {"city": "Lyon"}}


def grade(shape: dict, output: str, item: dict = ITEM) -> float:
    return build_grader(TypeAdapter(Grader).validate_python(shape))({"output_text": output}, item)


def check(operation: str, output: str) -> float:
    return grade({"type": "string_check", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
                  "operation": operation}, output)


def test_templates_fill_item_and_sample_values():
    assert render("{{ item.meta.city }} / {{sample.output_text}}", {"output_text": "x"}, ITEM) == "Lyon / x"
    with pytest.raises(KeyError, match="item.missing"):
        render("{{ item.missing }}", {}, ITEM)


def test_string_check_operations():
    assert check("eq", "Paris") == 1.0 and check("eq", "paris") == 0.0
    assert check("ne", "Paris") == 0.0 and check("ne", "Rome") == 1.0
    assert check("like", "It is Paris.") == 1.0 and check("like", "it is paris") == 0.0  # contains, case-sensitive
    assert check("ilike", "it is PARIS") == 1.0 and check("ilike", "Rome") == 0.0  # contains, ignoring case


def test_text_similarity_metrics_and_pass_threshold():
    base = {"type": "text_similarity", "reference": "the cat sat on the mat"}
    assert grade({**base, "evaluation_metric": "fuzzy_match"}, "the cat sat on the mat") == 1.0
    assert 0.5 < grade({**base, "evaluation_metric": "fuzzy_match"}, "the cat sat on a mat") < 1.0
    assert grade({**base, "evaluation_metric": "rouge_1"}, "the cat sat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert grade({**base, "evaluation_metric": "rouge_2"}, "the cat sat") == pytest.approx(2 * 1.0 * 0.4 / 1.4)
    assert grade({**base, "evaluation_metric": "rouge_l"}, "the cat sat on the mat") == 1.0
    assert grade({**base, "evaluation_metric": "bleu"}, "the cat sat on the mat") == pytest.approx(1.0)
    assert grade({**base, "evaluation_metric": "rouge_1", "pass_threshold": 0.6}, "the cat sat") == 1.0
    assert grade({**base, "evaluation_metric": "rouge_1", "pass_threshold": 0.7}, "the cat sat") == 0.0


def test_python_grader_runs_grade_sample_item():
    source = "def grade(sample, item):\n    return float(item['answer'].lower() in sample['output_text'].lower())\n"
    assert grade({"type": "python", "source": source}, "paris!") == 1.0
    with pytest.raises(ConfigError, match="grade"):
        grade({"type": "python", "source": "x = 1"}, "")


def test_multi_combines_named_graders_with_a_formula():
    shape = {"type": "multi", "calculate_output": "0.25 * exact + 0.75 * max(near, exact)", "graders": {
        "exact": {"type": "string_check", "reference": "{{ item.answer }}", "operation": "eq"},
        "near": {"type": "string_check", "reference": "{{ item.answer }}", "operation": "ilike"}}}
    assert grade(shape, "Paris") == 1.0
    assert grade(shape, "paris") == 0.75
    assert grade(shape, "Rome") == 0.0
    with pytest.raises(ConfigError, match="not allowed"):
        grade({**shape, "calculate_output": "exact.__class__"}, "x")
    with pytest.raises(ConfigError, match="not one of its graders"):
        grade({**shape, "calculate_output": "other + 1"}, "x")


class Judge(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible endpoint: answers 7 when the answer holds the reference, else 'score: 2'."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        content = body["messages"][-1]["content"]
        reply = '{"result": 7}' if "Answer: Paris" in content and "Reference: Paris" in content else "score: 2"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = HTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_score_model_asks_the_endpoint_and_parses_the_score(judge_url, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret")
    shape = {"type": "score_model", "model": "judge", "base_url": judge_url, "api_key_env": "JUDGE_KEY",
             "range": [0, 5], "sampling_params": {"temperature": 0},
             "input": [{"role": "system", "content": "Score 0-10."},
                       {"role": "user", "content": "Answer: {{ sample.output_text }}\nReference: {{ item.answer }}"}]}
    assert grade(shape, "Paris") == 5.0  # 7, clamped to the range
    assert grade(shape, "Rome") == 2.0
    request = Judge.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "judge" and request["body"]["temperature"] == 0
    assert request["body"]["messages"][1]["content"] == "Answer: Paris\nReference: Paris"


def test_grader_rewards_score_each_answer_against_its_row():
    from tuneforge.config.rewards import RewardConfig
    from tuneforge.evaluate.rewards import load_rewards, score

    rewards = load_rewards([
        RewardConfig(grader={"type": "string_check", "reference": "{{ item.answer }}", "operation": "like"}, weight=2),
        RewardConfig(grader={"type": "string_check", "reference": "{{ item.answer }}", "operation": "eq"}),
    ])
    assert [r.name for r in rewards] == ["string_check", "string_check_1"]
    rows = [{"prompt": "capital of France?", "answer": "Paris"}, {"prompt": "capital of Italy?", "answer": "Rome"}]
    scores = score(rewards, rows, ["Paris", "It is Paris"], [[1], [2]], timeout_s=5)
    assert scores.per_reward["string_check"] == [1.0, 0.0]
    assert scores.total == [3.0, 0.0]
