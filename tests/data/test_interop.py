"""LLaMA-Factory's own demo files, read, validated and templated as they are on disk."""

import json

import pytest

from tests.conftest import SHARED_DATASETS
from tuneforge.data.formats import Mapping, Problem, SourceReader
from tuneforge.data.template import IGNORE, tokenize_records

FOLDER = SHARED_DATASETS / "llamafactory"
pytestmark = pytest.mark.skipif(
    not FOLDER.is_dir(), reason=f"{FOLDER} not present (shared real-world datasets live beside the project, not in it)")

FILES = [  # name, records, detected format, record kind
    ("identity.json", 91, "alpaca", "chat"),
    ("alpaca_en_demo.json", 999, "alpaca", "chat"),
    ("glaive_toolcall_en_demo.json", 300, "sharegpt", "chat"),
    ("dpo_en_demo.json", 300, "preference", "preference"),
]
_cache: dict = {}


def records(name: str):
    """The file's records (read once per session); every record must be valid."""
    if name not in _cache:
        reader = SourceReader(str(FOLDER / name), "auto", Mapping())
        items = list(reader)
        problems = [item for item in items if isinstance(item, Problem)]
        assert problems == []
        _cache[name] = (reader.format, items)
    return _cache[name][1]


def stop_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([label for label in example.labels if label != IGNORE])


@pytest.mark.parametrize("name,count,fmt,kind", FILES)
def test_reads_every_record_with_its_format_kind_and_line(name, count, fmt, kind):
    items = records(name)
    assert len(items) == count
    assert _cache[name][0] == fmt
    assert {r.kind for r in items} == {kind}
    assert items[0].source == f"{FOLDER / name}:2"  # the first element of the pretty-printed array
    lines = [int(r.source.rsplit(":", 1)[1]) for r in items]
    assert lines == sorted(set(lines))  # each record names its own line


def test_alpaca_files_become_user_assistant_pairs():
    first = records("identity.json")[0]
    assert [(m.role, m.content) for m in first.messages] == [
        ("user", "hi"),
        ("assistant", "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"),
    ]
    for record in records("alpaca_en_demo.json"):
        assert [m.role for m in record.messages] == ["user", "assistant"]
        assert record.messages[0].content.strip() and record.messages[1].content.strip()


def test_glaive_tool_calls_and_tool_schemas():
    items = records("glaive_toolcall_en_demo.json")
    with_tools = [r for r in items if r.tools is not None]
    with_calls = [r for r in items if any(m.tool_calls for m in r.messages)]
    assert (len(with_tools), len(with_calls)) == (191, 153)
    for record in with_tools:
        schemas = json.loads(record.tools)
        assert isinstance(schemas, list) and schemas
        assert all(isinstance(s, dict) and s["name"] for s in schemas)
    for record in with_calls:
        offered = {schema["name"] for schema in json.loads(record.tools)}
        for message in record.messages:
            for call in message.tool_calls:
                assert message.role == "assistant"
                assert call.name in offered
                assert isinstance(json.loads(call.arguments), dict)
        roles = [m.role for m in record.messages]
        calling = next(i for i, m in enumerate(record.messages) if m.tool_calls)
        assert roles[calling + 1] == "tool"  # the observation answers the call
    first = items[0]
    assert [m.role for m in first.messages[:5]] == ["user", "assistant", "user", "assistant", "tool"]
    assert first.messages[3].content == ""
    [call] = first.messages[3].tool_calls
    assert (call.name, json.loads(call.arguments)) == ("search_recipes", {"ingredients": ["chicken", "bell peppers", "rice"]})


def test_dpo_pairs_have_a_prompt_and_two_different_replies():
    for record in records("dpo_en_demo.json"):
        assert record.messages and record.messages[-1].role == "user"
        for side in (record.chosen, record.rejected):
            assert [m.role for m in side] == ["assistant"]
            assert side[0].content.strip()
        assert record.chosen != record.rejected


@pytest.mark.parametrize("name,sample", [("identity.json", 1), ("alpaca_en_demo.json", 20),
                                         ("glaive_toolcall_en_demo.json", 1)])
def test_chat_files_tokenize_with_trained_tokens(chatml_tokenizer, name, sample):
    chosen = records(name)[::sample]
    assert len(chosen) == {"identity.json": 91, "alpaca_en_demo.json": 50, "glaive_toolcall_en_demo.json": 300}[name]
    stops = stop_ids(chatml_tokenizer)
    examples = tokenize_records(chosen, chatml_tokenizer, stops)
    for record, example in zip(chosen, examples, strict=True):
        assert example.trained_tokens > 0, record.source
        assert len(example.labels) == len(example.input_ids)
        trained_turns = sum(m.trained for m in record.messages)
        assert sum(label in stops for label in example.labels) == trained_turns, record.source


def test_identity_placeholders_and_glaive_tool_names_are_trained_verbatim(chatml_tokenizer):
    stops = stop_ids(chatml_tokenizer)
    [identity] = tokenize_records(records("identity.json")[:1], chatml_tokenizer, stops)
    assert trained_text(chatml_tokenizer, identity) == (
        "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?<|im_end|>")
    calling = [r for r in records("glaive_toolcall_en_demo.json") if any(m.tool_calls for m in r.messages)][:10]
    for record, example in zip(calling, tokenize_records(calling, chatml_tokenizer, stops), strict=True):
        trained = trained_text(chatml_tokenizer, example)
        names = [c.name for m in record.messages for c in m.tool_calls]
        for name in names:
            assert f'<tool_call>{{"name": "{name}", "arguments": ' in trained, record.source
        observation = next(m.content for m in record.messages if m.role == "tool")
        assert observation.strip() not in trained  # tool results are read, not trained
