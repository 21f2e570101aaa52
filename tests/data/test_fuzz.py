"""Property tests: no input, however broken, makes a reader or converter fail with anything but a
Record, a Problem, or a DataError/ValueError that says what is wrong."""

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data.formats import FORMATS, Mapping, Problem, SourceReader, convert
from tuneforge.data.readers import read
from tuneforge.data.records import ROLES, Record
from tuneforge.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")
KINDS = {"chat": "chat", "sharegpt": "chat", "alpaca": "chat", "preference": "preference", "feedback": "feedback",
         "text": "text", "classification": "classification"}
KEYS = ["messages", "conversations", "role", "content", "from", "value", "tool_calls", "function", "name",
        "arguments", "function_call", "weight", "tools", "system", "instruction", "input", "output", "history",
        "chosen", "rejected", "prompt", "completion", "label", "text", "preferred_output", "non_preferred_output",
        "type", "id"]
WORDS = ["system", "user", "assistant", "tool", "human", "gpt", "observation", "function_call", "robot", "text",
         "true", "0", "", " ", "[]", "{}", "{\"name\": \"f\"}", "[{\"name\": \"f\", \"arguments\": {}}]"]

scalars = (st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=True)
           | st.sampled_from(WORDS) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=5)
                      | children.map(json.dumps)),  # JSON text inside a string, as CSV cells carry it
    max_leaves=30,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(WORDS[:9])},
    optional={"content": scalars, "from": st.sampled_from(WORDS[:9]), "value": scalars, "weight": scalars,
              "tool_calls": json_values, "function_call": json_values},
)
records = st.dictionaries(
    st.sampled_from(KEYS),
    st.lists(message, max_size=4) | message | json_values | st.lists(message, max_size=3).map(json.dumps),
    max_size=6,
)

words = st.sampled_from(["Hi", "What is 2 + 2?", "4", "Oslo", " ", ""]) | st.text(max_size=8)
arguments = st.sampled_from(['{"city": "Oslo"}', "{}", "", "{oops"]) | json_values


@st.composite
def conversation(draw, sharegpt: bool = False) -> list[dict]:
    """A mostly well-formed conversation (so converters get deep), with random words and extras."""
    turns = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns.append({"role": "user", "content": draw(words)})
        if draw(st.integers(0, 3)) == 0:
            call = {"name": draw(st.sampled_from(["get_weather", "", "f"])), "arguments": draw(arguments)}
            turns.append({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": call}]})
            turns.append({"role": "tool", "content": draw(words)})
        reply = {"role": "assistant", "content": draw(words)}
        weight = draw(st.sampled_from([None, None, 0, 1, 0.5, True]))
        if weight is not None and not sharegpt:
            reply["weight"] = weight
        turns.append(reply)
    if sharegpt:
        names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
        turns = [{"from": "function_call", "value": json.dumps(t["tool_calls"][0]["function"])} if t.get("tool_calls")
                 else {"from": names[t["role"]], "value": t["content"]} for t in turns]
    if turns and draw(st.integers(0, 3)) == 0:  # one message spoiled
        index = draw(st.integers(0, len(turns) - 1))
        turns[index] = {**turns[index], draw(st.sampled_from(["role", "content", "from", "value", "weight"])): draw(scalars)}
    return turns


def shaped(fmt: str):
    """A record of one format, with its optional fields drawn at random."""
    tools = st.none() | st.just([{"name": "get_weather", "parameters": {}}]) | st.just("[]") | json_values
    if fmt == "chat":
        return st.fixed_dictionaries({"messages": conversation()}, optional={"tools": tools})
    if fmt == "sharegpt":
        return st.fixed_dictionaries({"conversations": conversation(sharegpt=True)},
                                     optional={"tools": tools.map(json.dumps), "system": words})
    if fmt == "alpaca":
        return st.fixed_dictionaries({"instruction": words, "output": words}, optional={
            "input": words, "system": words, "history": st.lists(st.lists(words, min_size=2, max_size=2), max_size=2)})
    if fmt == "preference":
        reply = words | st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": words}), max_size=2)
        return st.one_of(
            st.fixed_dictionaries({"prompt": words, "chosen": reply, "rejected": reply}),
            st.fixed_dictionaries({"conversations": conversation(sharegpt=True).map(lambda c: c[:-1]),
                                   "chosen": st.fixed_dictionaries({"from": st.just("gpt"), "value": words}),
                                   "rejected": st.fixed_dictionaries({"from": st.just("gpt"), "value": words})}),
            st.fixed_dictionaries({"input": st.fixed_dictionaries({"messages": conversation().map(lambda c: c[:-1])},
                                                                  optional={"tools": tools}),
                                   "preferred_output": reply, "non_preferred_output": reply}),
            st.fixed_dictionaries({"chosen": conversation(), "rejected": conversation()}),
        )
    if fmt == "feedback":
        label = st.sampled_from([True, False, "true", "0", "maybe", None, 2])
        return st.fixed_dictionaries({"messages": conversation(), "label": label}) | st.fixed_dictionaries(
            {"prompt": words, "completion": words, "label": label})
    if fmt == "text":
        return st.fixed_dictionaries({"text": words})
    return st.fixed_dictionaries({"text": words, "label": words | st.integers() | st.booleans()})


@st.composite
def spoiled(draw, fmt: str) -> dict:
    """A record of the format with, sometimes, one top-level field replaced or removed."""
    value = draw(shaped(fmt))
    if value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        if draw(st.booleans()):
            del value[key]
        else:
            value[key] = draw(json_values)
    return value


plausible = st.one_of([spoiled(fmt) for fmt in FORMATS])


def scratch(suffix: str, data: bytes):
    """A fresh temporary file per example (pytest's tmp_path is shared by every hypothesis example)."""
    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / f"data{suffix}"
    path.write_bytes(data)
    return folder, path


def read_all(path: Path, fmt: str = "auto") -> list[Record | Problem]:
    """Every item of a file; a DataError (an unreadable file) counts as an allowed outcome: []."""
    try:
        items = list(SourceReader(str(path), fmt, Mapping()))
    except DataError as error:
        assert str(error).startswith(str(path))
        return []
    for item in items:
        assert isinstance(item, (Record, Problem))
        location = item.source if isinstance(item, Record) else item.location
        assert location.startswith(str(path))
        if isinstance(item, Problem):
            assert item.reason.strip()
    return items


def check_record(record: Record, fmt: str) -> None:
    """What every converted record promises, whatever it came from."""
    if fmt != "auto":
        assert record.kind == KINDS[fmt]
    for m in (*record.messages, *record.chosen, *record.rejected):
        assert m.role in ROLES
        assert isinstance(m.content, str)
        for call in m.tool_calls:
            assert call.name.strip()
            json.loads(call.arguments)
    if record.tools is not None:
        assert isinstance(json.loads(record.tools), list)
    if record.kind in ("chat", "feedback"):
        assert any(m.trained for m in record.messages)
    if record.kind == "preference":
        assert record.chosen and record.rejected and record.chosen != record.rejected
    if record.kind in ("text", "classification"):
        assert record.text.strip() and not record.messages


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bytes_in_any_container(suffix, data):
    folder, path = scratch(suffix, data)
    with folder:
        read_all(path)


@SETTINGS
@given(values=st.lists(plausible | records | json_values, max_size=6))
def test_random_json_values_as_json_lines_and_array(values):
    with tempfile.TemporaryDirectory() as folder:
        lines = Path(folder) / "data.jsonl"
        lines.write_text("".join(json.dumps(v) + "\n" for v in values))
        items = read_all(lines)
        assert [i.source if isinstance(i, Record) else i.location for i in items] == [
            f"{lines}:{n}" for n in range(1, len(values) + 1)]
        array = Path(folder) / "data.json"
        array.write_text(json.dumps(values, indent=1))
        items = read_all(array)
        assert len(items) == len(values)
        starts = [int((i.source if isinstance(i, Record) else i.location).rsplit(":", 1)[1]) for i in items]
        assert starts == sorted(set(starts))  # one element per line start, in order


@SETTINGS
@given(value=plausible | records | json_values)
def test_convert_random_values_in_every_format(value):
    for fmt in (*FORMATS, "auto"):
        try:
            record = convert(value, "x:1", fmt, Mapping())
        except (ValueError, DataError) as error:
            assert str(error).strip()
            continue
        assert record.source == "x:1"
        check_record(record, fmt)


@SETTINGS
@given(value=plausible | records)
def test_convert_with_a_column_and_role_mapping(value):
    mapping = Mapping(columns={"messages": "conversations", "content": "value", "output": "text"},
                      roles={"robot": "assistant", "human": "user"})
    for fmt in (*FORMATS, "auto"):
        try:
            record = convert(value, "x:1", fmt, mapping)
        except (ValueError, DataError):
            continue
        check_record(record, fmt)


cell = st.text(max_size=20)


@SETTINGS
@given(rows=st.lists(st.lists(cell, min_size=3, max_size=3), max_size=6), delimiter=st.sampled_from([",", "\t"]))
def test_csv_round_trip(rows, delimiter):
    """Whatever the cells hold (quotes, delimiters, newlines), a row comes back as it was written;
    rows of only blank cells are skipped."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter).writerows([["a", "b", "c"], *rows])
    suffix = ".csv" if delimiter == "," else ".tsv"
    folder, path = scratch(suffix, buffer.getvalue().encode("utf-8"))
    with folder:
        raw = list(read(str(path)))
    assert all(r.problem is None for r in raw)
    assert [r.value for r in raw] == [dict(zip("abc", row)) for row in rows if any(c.strip() for c in row)]
