import json

import pytest

from tests.conftest import SHARED_DATASETS, write_jsonl
from tuneforge.data.formats import read_examples
from tuneforge.errors import DataError


def test_chat_jsonl_with_weights(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]}])
    [example] = read_examples(path)
    assert [m.role for m in example.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m.trained for m in example.messages] == [False, False, False, False, True]
    assert example.source == f"{path}:1"


def test_alpaca_json_with_input_system_and_history(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "You translate.",
         "history": [["first q", "first a"]]},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]))
    first, second = read_examples(path)
    assert [(m.role, m.content) for m in first.messages] == [
        ("system", "You translate."), ("user", "first q"), ("assistant", "first a"),
        ("user", "Translate\nbonjour"), ("assistant", "hello"),
    ]
    assert [(m.role, m.content) for m in second.messages] == [("user", "Say hi"), ("assistant", "hi")]
    assert second.source == f"{path}[1]"


def test_every_bad_record_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path.write_text("\n".join([
        good,
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                                 {"role": "assistant", "content": "a"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"text": "what format is this"}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}),
    ]) + "\n")
    with pytest.raises(DataError) as error:
        read_examples(path)
    message = str(error.value)
    assert "6 invalid record(s)" in message
    assert f"{path}:2: invalid JSON" in message
    assert f"{path}:3: messages[0].role: unknown role 'robot'" in message
    assert f"{path}:4: two user messages in a row" in message
    assert f"{path}:5: messages[1].content: empty assistant message" in message
    assert f"{path}:6: unknown format" in message
    assert f"{path}:7: no assistant message to train on" in message


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"messages": []}\n{"messages": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        read_examples(path)


def test_named_format_mismatch_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(DataError, match="'messages' must be a non-empty list"):
        read_examples(path, "chat")


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets not present (a user's fresh clone)")
@pytest.mark.parametrize("name,count", [("identity.json", 91), ("alpaca_en_demo.json", 999)])
def test_reads_llamafactory_alpaca_files_unchanged(name, count):
    examples = read_examples(SHARED_DATASETS / "llamafactory" / name)
    assert len(examples) == count
    assert all(e.messages[-1].role == "assistant" for e in examples)


def test_pretty_printed_single_object_is_one_record(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}, indent=2))
    [example] = read_examples(path)
    assert example.messages[-1].content == "hi"
