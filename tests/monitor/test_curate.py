"""`tuneforge curate`: rated traffic -> SFT records and preference pairs that tuneforge's own readers
and `tuneforge train` accept; duplicates of the training set dropped, PII redacted, every record traced."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tests.monitor.test_report import T0, log_feedback, log_request, said
from tuneforge.cli import main
from tuneforge.config import DataConfig
from tuneforge.data.formats import read_records
from tuneforge.data.prepare import prepare
from tuneforge.monitor.curate import curate
from tuneforge.monitor.store import connect, read_feedback, read_requests

LONG_ANSWER = ("You can return any item within thirty days of delivery for a full refund, as long as it is unused "
               "and in its original packaging; start the return from the orders page of your account.")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def train_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [*user("What are your opening hours?"), {"role": "assistant", "content": "We are open 9 to 5."}]},
        {"messages": [*user("How do I return an item?"), {"role": "assistant", "content": LONG_ANSWER}]},
    ])


@pytest.fixture
def log(tmp_path):
    """Every case curation distinguishes, one request each (ids say which)."""
    conn = connect(tmp_path / "requests.db")
    cases = [
        # id, messages, output, extra columns, feedback [(rating, correction)]
        ("approved", user("Where is my order 1234?"), "It ships tomorrow.", {}, [(1, None)]),
        ("changed-mind", user("Do you sell gift cards?"), "Yes, from 10 to 200 pounds.", {}, [(-1, None), (1, None)]),
        ("rejected-corrected", user("Can I change my delivery address?"), "No.", {},
         [(-1, "Yes, until the order ships: edit it on the orders page.")]),
        ("approved-corrected", user("Is the lamp dimmable?"), "Yes.", {},
         [(1, "Yes, with any standard dimmer switch.")]),
        ("rejected", user("Why was I charged twice?"), "I don't know.", {}, [(-1, None)]),
        ("unrated", user("Hello"), "Hi! How can I help?", {}, []),
        ("failed", user("Where is my refund?"), "", {"status": 500}, [(1, None)]),
        ("text", [{"role": "prompt", "content": "Our returns policy:"}], " thirty days.",
         {"endpoint": "/v1/completions"}, [(1, None)]),
        ("classified", [{"role": "prompt", "content": "storm and fog"}], "tool", {"endpoint": "/v1/classify"},
         [(-1, "weather")]),
        ("cut-off", user("Describe the sofa."), "The sofa is", {"finish_reason": "length"}, [(1, None)]),
        ("two-users", [*user("Hi"), *user("Still there?")], "Yes.", {}, [(1, None)]),
        # duplicates: of a training record (case and spacing differ), near one (one word differs), of "approved"
        ("train-duplicate", user("what are your  OPENING hours?"), "We are open 9 to 5.", {}, [(1, None)]),
        ("train-near-duplicate", user("How do I return an item?"), LONG_ANSWER.replace("account.", "account page."), {},
         [(1, None)]),
        ("repeat", user("WHERE is my order 1234?"), "It ships  tomorrow.", {}, [(1, None)]),
        ("pii", [{"role": "developer", "content": "Be kind."}, *user("Email me at jane.doe@example.com or call "
                                                                      "+44 20 7946 0958.")],
         "I will email jane.doe@example.com today.", {}, [(1, None)]),
        ("multi-turn", [*user("Hi"), {"role": "assistant", "content": "Hello!"}, *user("Do you deliver to Spain?")],
         "Yes, in 3-5 days.", {}, [(1, None)]),
    ]
    for index, (request_id, messages, output, extra, ratings) in enumerate(cases):
        log_request(conn, request_id, T0 + index, messages=messages, output=output, **extra)
        for order, (rating, correction) in enumerate(ratings):
            log_feedback(conn, request_id, rating, T0 + 100 + index + order / 10, correction)
    conn.commit()
    conn.close()
    return tmp_path / "requests.db"


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rated_traffic_becomes_sft_records_and_preference_pairs(log, train_file, tmp_path, capsys):
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(log), "--out", str(out), "--train", str(train_file)]) == 0
    chat = lines(out)
    answers = [record["messages"][-1]["content"] for record in chat]
    assert answers == ["It ships tomorrow.", "Yes, from 10 to 200 pounds.",
                       "Yes, until the order ships: edit it on the orders page.",
                       "Yes, with any standard dimmer switch.", "I will email <EMAIL> today.", "Yes, in 3-5 days."]
    assert chat[0] == {"messages": [*user("Where is my order 1234?"),
                                    {"role": "assistant", "content": "It ships tomorrow."}]}
    assert chat[4]["messages"][:2] == [{"role": "system", "content": "Be kind."},
                                      {"role": "user", "content": "Email me at <EMAIL> or call <PHONE>."}]
    assert len(chat[5]["messages"]) == 4  # the whole conversation, earlier turns included

    pairs = lines(tmp_path / "curated.preference.jsonl")
    assert pairs == [{"prompt": user("Can I change my delivery address?"),
                      "chosen": [{"role": "assistant", "content": "Yes, until the order ships: edit it on the orders page."}],
                      "rejected": [{"role": "assistant", "content": "No."}]}]

    manifest = json.loads((tmp_path / "curated.jsonl.manifest.json").read_text())
    entries = [(e["request_ids"], e["rating"], e["corrected"]) for e in manifest["chat"]]
    assert entries == [(["approved", "repeat"], 1, False), (["changed-mind"], 1, False),
                       (["rejected-corrected"], -1, True), (["approved-corrected"], 1, True), (["pii"], 1, False),
                       (["multi-turn"], 1, False)]
    assert [e["line"] for e in manifest["chat"]] == [1, 2, 3, 4, 5, 6]
    assert manifest["preference"][0]["request_ids"] == ["rejected-corrected"]
    assert manifest["counts"]["skipped"] == {
        "answer cut off at the token limit": 1, "chat: duplicate of a curated record": 1,
        "chat: duplicate of a training record": 1, "chat: near duplicate of a training record": 1,
        "failed request": 1, "no feedback": 1, "not a trainable conversation (the chat format rejects its turns)": 1,
        "rejected without a correction": 1, "text completion (a raw prompt, not a conversation)": 1,
        "classification (texts and labels, not a conversation)": 1,
    }
    assert manifest["counts"]["pii_redacted"] == {"email": 2, "phone": 1}
    assert manifest["counts"]["requests"] == 16 and manifest["files"]["preference"] == "curated.preference.jsonl"
    assert "6 chat records" in said(capsys)


def test_the_curated_files_read_back_and_prepare(log, train_file, tmp_path, chatml_tokenizer):
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(log), "--out", str(out), "--train", str(train_file)]) == 0
    assert {r.kind for r in read_records(out)} == {"chat"}
    assert {r.kind for r in read_records(tmp_path / "curated.preference.jsonl")} == {"preference"}
    stops = [chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prepared = prepare(DataConfig(train=[str(out), str(train_file)]), chatml_tokenizer, stops, 256, 0)
    assert prepared.manifest.train_records == 8 and prepared.manifest.dropped_records == 0


def test_tuneforge_trains_on_the_curated_file(log, tmp_path, run_config, one_thread):
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(log), "--out", str(out)]) == 0
    config = run_config(**{"data.train": str(out), "data.validation": [], "train.max_steps": 2,
                           "train.max_seq_length": 256, "eval.general_check": False})
    assert main(["train", str(config)]) == 0


def test_no_redact_keeps_what_was_logged(log, tmp_path):
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(log), "--out", str(out), "--no-redact"]) == 0
    assert "jane.doe@example.com" in out.read_text()
    # without --train, the training duplicates stay (the near one differs from the exact one's record)
    manifest = json.loads((tmp_path / "curated.jsonl.manifest.json").read_text())
    assert manifest["counts"]["chat"] == 8 and manifest["redacted"] is False


def test_an_existing_output_is_kept_unless_overwrite(log, tmp_path, capsys):
    out = tmp_path / "curated.jsonl"
    out.write_text("precious\n")
    assert main(["curate", "--db", str(log), "--out", str(out)]) == 2
    assert "pass --overwrite" in said(capsys)
    assert out.read_text() == "precious\n"
    assert main(["curate", "--db", str(log), "--out", str(out), "--overwrite"]) == 0
    assert len(lines(out)) == 8
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_stale_preference_file_goes_when_overwritten(log, tmp_path):
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(log), "--out", str(out)]) == 0
    assert (tmp_path / "curated.preference.jsonl").exists()
    assert main(["curate", "--db", str(log), "--out", str(out), "--overwrite", "--since", "2025-03-01T09:00:03"]) == 0
    assert not (tmp_path / "curated.preference.jsonl").exists()  # no pairs in this window
    assert json.loads((tmp_path / "curated.jsonl.manifest.json").read_text())["files"]["preference"] is None


def test_nothing_to_curate_writes_nothing_and_exits_1(tmp_path, capsys):
    conn = connect(tmp_path / "requests.db")
    log_request(conn, "unrated", T0)
    conn.commit()
    out = tmp_path / "curated.jsonl"
    assert main(["curate", "--db", str(tmp_path / "requests.db"), "--out", str(out)]) == 1
    assert "nothing to curate" in said(capsys) and not out.exists()
    assert main(["curate", "--db", str(tmp_path / "requests.db"), "--out", str(tmp_path / "curated.csv")]) == 2


def test_the_latest_feedback_decides(tmp_path):
    conn = connect(tmp_path / "requests.db")
    log_request(conn, "r", T0, output="Blue.")
    log_feedback(conn, "r", 1, T0 + 1)
    log_feedback(conn, "r", -1, T0 + 2, correction="Green.")
    conn.commit()
    result = curate(read_requests(conn), read_feedback(conn))
    assert [c.value["messages"][-1]["content"] for c in result.chat] == ["Green."]
    assert [c.value["rejected"][0]["content"] for c in result.preference] == ["Blue."]
