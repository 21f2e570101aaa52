"""Every supported format converted into the canonical Record, and every bad record named with its line."""

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tuneforge.data.formats import FORMATS, Mapping, Problem, SourceReader, detect, read_records
from tuneforge.data.records import ToolCall
from tuneforge.data.validation import DataReport
from tuneforge.errors import DataError

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


def write_lines(path: Path, lines: list) -> Path:
    """One JSON line per dict; strings are written as they are (to plant broken lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def only(tmp_path: Path, record: dict, fmt: str = "auto", mapping: Mapping = Mapping()):
    path = write_lines(tmp_path / "one.jsonl", [record])
    [example] = read_records(path, fmt, mapping)
    assert example.source == f"{path}:1"
    return example


def turns(messages) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def failure(path: Path, fmt: str = "auto", mapping: Mapping = Mapping()) -> str:
    with pytest.raises(DataError) as error:
        read_records(path, fmt, mapping)
    return str(error.value)


def user_assistant(question: str = "Name a fjord.", answer: str = "Sognefjord.") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# --- chat (OpenAI fine-tuning JSONL) -------------------------------------------------------------


def test_openai_chat_with_tool_calls_weights_and_tools(tmp_path):
    record = only(tmp_path, {"messages": [
        {"role": "system", "content": "You report the weather."},
        {"role": "user", "content": "How cold is Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": -3}"},
        {"role": "assistant", "content": "It is -3 °C in Oslo.", "weight": 0},
        {"role": "user", "content": "And Bergen?"},
        {"role": "assistant", "content": "I only looked up Oslo.", "weight": 1},
    ], "tools": [WEATHER_TOOL]})
    assert record.kind == "chat"
    assert turns(record.messages) == [
        ("system", "You report the weather."), ("user", "How cold is Oslo?"), ("assistant", ""),
        ("tool", "{\"temp_c\": -3}"), ("assistant", "It is -3 °C in Oslo."), ("user", "And Bergen?"),
        ("assistant", "I only looked up Oslo."),
    ]
    assert [m.weight for m in record.messages] == [None, None, None, None, 0, None, 1]
    assert [m.trained for m in record.messages] == [False, False, True, False, False, False, True]
    assert record.messages[2].tool_calls == (ToolCall("get_weather", "{\"city\": \"Oslo\"}"),)
    assert json.loads(record.tools) == [WEATHER_TOOL]
    assert (record.chosen, record.rejected, record.label, record.text) == ((), (), None, "")


def test_chat_arguments_as_object_legacy_function_call_and_text_parts(tmp_path):
    record = only(tmp_path, {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Rome?"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Roma", "unit": "C"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "", "function_call": {"name": "get_time", "arguments": ""}},
        {"role": "tool", "content": "noon"},
        {"role": "assistant", "content": "Sunny at noon."},
    ]})
    assert record.messages[0].content == "Weather in Rome?"
    assert record.messages[1].tool_calls == (ToolCall("get_weather", "{\"city\": \"Roma\", \"unit\": \"C\"}"),)
    assert record.messages[3].tool_calls == (ToolCall("get_time", "{}"),)
    assert record.tools is None


# --- sharegpt ------------------------------------------------------------------------------------


def test_sharegpt_with_function_call_observation_system_and_tools_as_json_text(tmp_path):
    tools = [{"name": "lookup_word", "description": "Dictionary lookup",
              "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}]
    record = only(tmp_path, {"conversations": [
        {"from": "human", "value": "What does tarn mean?"},
        {"from": "function_call", "value": json.dumps({"name": "lookup_word", "arguments": {"word": "tarn"}})},
        {"from": "observation", "value": "{\"definition\": \"a small mountain lake\"}"},
        {"from": "gpt", "value": "A tarn is a small mountain lake."},
    ], "system": "You explain words.", "tools": json.dumps(tools)})
    assert record.kind == "chat"
    assert turns(record.messages) == [
        ("system", "You explain words."), ("user", "What does tarn mean?"), ("assistant", ""),
        ("tool", "{\"definition\": \"a small mountain lake\"}"), ("assistant", "A tarn is a small mountain lake."),
    ]
    assert record.messages[2].tool_calls == (ToolCall("lookup_word", "{\"word\": \"tarn\"}"),)
    assert [m.trained for m in record.messages] == [False, False, True, False, True]
    assert json.loads(record.tools) == tools


def test_sharegpt_system_turn_inside_the_conversation_wins_over_the_column(tmp_path):
    record = only(tmp_path, {"system": "column system", "conversations": [
        {"from": "system", "value": "turn system"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hey"},
    ]})
    assert turns(record.messages) == [("system", "turn system"), ("user", "hi"), ("assistant", "hey")]


# --- alpaca --------------------------------------------------------------------------------------


def test_alpaca_with_input_system_and_history(tmp_path):
    path = tmp_path / "alpaca.json"
    text = json.dumps([
        {"instruction": "Translate to English.", "input": "god morgen", "output": "good morning",
         "system": "You translate.", "history": [["Translate: takk", "thanks"]]},
        {"instruction": "Count to three.", "input": "", "output": "1, 2, 3"},
    ], indent=2)
    path.write_text(text)
    starts = [number for number, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    first, second = read_records(path)
    assert turns(first.messages) == [
        ("system", "You translate."), ("user", "Translate: takk"), ("assistant", "thanks"),
        ("user", "Translate to English.\ngod morgen"), ("assistant", "good morning"),
    ]
    assert [m.trained for m in first.messages] == [False, False, True, False, True]
    assert turns(second.messages) == [("user", "Count to three."), ("assistant", "1, 2, 3")]
    assert (first.kind, second.kind) == ("chat", "chat")
    assert starts == [2, 14]
    assert (first.source, second.source) == (f"{path}:2", f"{path}:14")


# --- preference ----------------------------------------------------------------------------------


def test_preference_sharegpt_style(tmp_path):
    record = only(tmp_path, {
        "conversations": [{"from": "human", "value": "Best knot for a tent line?"}],
        "chosen": {"from": "gpt", "value": "A taut-line hitch: it adjusts and holds."},
        "rejected": {"from": "gpt", "value": "A granny knot."},
    })
    assert record.kind == "preference"
    assert turns(record.messages) == [("user", "Best knot for a tent line?")]
    assert turns(record.chosen) == [("assistant", "A taut-line hitch: it adjusts and holds.")]
    assert turns(record.rejected) == [("assistant", "A granny knot.")]


def test_preference_openai_dpo_shape_with_tools(tmp_path):
    record = only(tmp_path, {
        "input": {"messages": [{"role": "system", "content": "Be exact."},
                               {"role": "user", "content": "Weather in Lima?"}], "tools": [WEATHER_TOOL]},
        "preferred_output": [{"role": "assistant", "content": "Let me check Lima."}],
        "non_preferred_output": [{"role": "assistant", "content": "Probably rain."}],
    })
    assert record.kind == "preference"
    assert turns(record.messages) == [("system", "Be exact."), ("user", "Weather in Lima?")]
    assert turns(record.chosen) == [("assistant", "Let me check Lima.")]
    assert turns(record.rejected) == [("assistant", "Probably rain.")]
    assert json.loads(record.tools) == [WEATHER_TOOL]


def test_preference_trl_strings_and_implicit_prompt(tmp_path):
    explicit = only(tmp_path, {"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "system": "Do math."})
    assert turns(explicit.messages) == [("system", "Do math."), ("user", "2 + 2?")]
    assert (turns(explicit.chosen), turns(explicit.rejected)) == ([("assistant", "4")], [("assistant", "5")])
    implicit = only(tmp_path, {
        "chosen": user_assistant("Capital of Peru?", "Lima."),
        "rejected": user_assistant("Capital of Peru?", "Cusco."),
    })
    assert turns(implicit.messages) == [("user", "Capital of Peru?")]
    assert (turns(implicit.chosen), turns(implicit.rejected)) == ([("assistant", "Lima.")], [("assistant", "Cusco.")])


# --- feedback, text, classification --------------------------------------------------------------


def test_feedback_messages_with_label_and_prompt_completion(tmp_path):
    good = only(tmp_path, {"messages": user_assistant("Is ice cold?", "Yes."), "label": True})
    assert (good.kind, good.label) == ("feedback", True)
    assert turns(good.messages) == [("user", "Is ice cold?"), ("assistant", "Yes.")]
    bad = only(tmp_path, {"prompt": "Is fire cold?", "completion": "Yes, very.", "label": False})
    assert (bad.kind, bad.label) == ("feedback", False)
    assert turns(bad.messages) == [("user", "Is fire cold?"), ("assistant", "Yes, very.")]


def test_text_and_classification(tmp_path):
    text = only(tmp_path, {"text": "Fjords are glacial valleys.\nSome are deep."})
    assert (text.kind, text.text, text.messages, text.label) == ("text", "Fjords are glacial valleys.\nSome are deep.", (), None)
    named = only(tmp_path, {"text": "Loved it", "label": "positive"})
    assert (named.kind, named.text, named.label) == ("classification", "Loved it", "positive")
    numbered = only(tmp_path, {"text": "Meh", "label": 3})
    assert numbered.label == "3"


# --- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value,fmt", [
    ({"messages": []}, "chat"),
    ({"conversations": []}, "sharegpt"),
    ({"instruction": "x", "output": "y"}, "alpaca"),
    ({"conversations": [], "chosen": {}, "rejected": {}}, "preference"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
    ({"input": {}, "preferred_output": [], "non_preferred_output": []}, "preference"),
    ({"messages": [], "label": True}, "feedback"),
    ({"prompt": "p", "completion": "c", "label": False}, "feedback"),
    ({"text": "t"}, "text"),
    ({"text": "t", "label": "x"}, "classification"),
])
def test_detect(value, fmt):
    assert detect(value) == fmt


def test_detect_unknown_keys_names_them_and_the_way_out():
    with pytest.raises(ValueError) as error:
        detect({"question": "q", "answer": "a"})
    assert "unknown format: keys ['answer', 'question']" in str(error.value)
    assert "data.columns" in str(error.value)


def test_format_is_detected_once_per_file_from_the_first_record(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        {"instruction": "Say yes.", "output": "yes"},
        {"messages": user_assistant()},
    ])
    reader = SourceReader(str(path), "auto", Mapping())
    items = list(reader)
    assert reader.format == "alpaca"
    assert turns(items[0].messages) == [("user", "Say yes."), ("assistant", "yes")]
    assert items[1].location == f"{path}:2"
    assert items[1].reason == "'instruction' is missing or empty"


def test_named_format_is_used_and_a_mismatch_reported(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    assert f"{path}:1: 'messages' must be a non-empty list of messages" in failure(path, "chat")
    assert f"{path}:1: unknown format 'xml'; expected one of {', '.join(FORMATS)}" in failure(path, "xml")


# --- column and role mapping ---------------------------------------------------------------------


def test_column_and_role_mapping(tmp_path):
    mapping = Mapping(columns={"messages": "dialog", "role": "speaker", "content": "utterance"},
                      roles={"Customer": "user", "Agent": "assistant", "Note": "system"})
    record = only(tmp_path, {"dialog": [
        {"speaker": "Note", "utterance": "Support chat."},
        {"speaker": "customer", "utterance": "My order is late."},
        {"speaker": "AGENT", "utterance": "Sorry, it ships today."},
    ]}, mapping=mapping)
    assert turns(record.messages) == [("system", "Support chat."), ("user", "My order is late."),
                                      ("assistant", "Sorry, it ships today.")]


def test_alpaca_column_mapping_and_role_override(tmp_path):
    mapping = Mapping(columns={"instruction": "question", "output": "answer"})
    record = only(tmp_path, {"question": "Largest ocean?", "answer": "The Pacific."}, mapping=mapping)
    assert turns(record.messages) == [("user", "Largest ocean?"), ("assistant", "The Pacific.")]
    # a file whose "bot" is the user: the mapping overrides the built-in alias
    swapped = only(tmp_path, {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                   mapping=Mapping(roles={"bot": "user"}))
    assert turns(swapped.messages) == [("user", "hi"), ("assistant", "hello")]


def test_unmapped_role_points_at_data_roles(tmp_path):
    path = write_lines(tmp_path / "roles.jsonl", [{"messages": [{"role": "Customer", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}])
    message = failure(path)
    assert (f"{path}:1: messages[0].role: unknown role 'Customer'; expected one of assistant, bot, chatgpt, function, gpt, "
            "human, ipython, model, observation, system, tool, user (or map it with data.roles)") in message


# --- CSV cells holding JSON ----------------------------------------------------------------------


def test_csv_cells_holding_messages_and_tools_as_json(tmp_path):
    path = write_csv(tmp_path / "chat.csv", [
        ["messages", "tools"],
        [json.dumps(user_assistant("Weather in Oslo?", "Cold.")), json.dumps([WEATHER_TOOL])],
        [json.dumps(user_assistant("Weather in Rome?", "Warm.")), ""],  # a row without tools
    ])
    first, second = read_records(path)
    assert turns(first.messages) == [("user", "Weather in Oslo?"), ("assistant", "Cold.")]
    assert json.loads(first.tools) == [WEATHER_TOOL]
    assert (second.tools, second.source) == (None, f"{path}:3")


def test_csv_alpaca_with_empty_history_cell_and_feedback_labels_as_text(tmp_path):
    alpaca = write_csv(tmp_path / "alpaca.csv", [
        ["instruction", "input", "output", "history"],
        ["Add.", "2 and 3", "5", ""],
        ["Add again.", "", "9", json.dumps([["Add 4 and 4.", "8"]])],
    ])
    first, second = read_records(alpaca)
    assert turns(first.messages) == [("user", "Add.\n2 and 3"), ("assistant", "5")]
    assert turns(second.messages) == [("user", "Add 4 and 4."), ("assistant", "8"), ("user", "Add again."), ("assistant", "9")]
    feedback = write_csv(tmp_path / "kto.csv", [
        ["prompt", "completion", "label"], ["Sky colour?", "Blue.", "true"], ["Sky colour?", "Green.", "False"],
    ])
    assert [(r.kind, r.label) for r in read_records(feedback)] == [("feedback", True), ("feedback", False)]


def test_tsv_classification(tmp_path):
    path = write_csv(tmp_path / "labels.tsv", [["text", "label"], ["great, thanks", "pos"], ["awful", "neg"]], "\t")
    assert [(r.kind, r.text, r.label) for r in read_records(path)] == [
        ("classification", "great, thanks", "pos"), ("classification", "awful", "neg")]


def test_csv_json_cell_keys_are_renamed_by_the_column_mapping(tmp_path):
    path = write_csv(tmp_path / "mapped.csv", [
        ["dialog"], [json.dumps([{"speaker": "user", "says": "Hi there"}, {"speaker": "assistant", "says": "Hello"}])],
    ])
    mapping = Mapping(columns={"messages": "dialog", "role": "speaker", "content": "says"})
    [record] = read_records(path, "auto", mapping)
    assert turns(record.messages) == [("user", "Hi there"), ("assistant", "Hello")]


def test_csv_cell_with_broken_json_names_the_row(tmp_path):
    path = write_csv(tmp_path / "broken.csv", [
        ["messages"], [json.dumps(user_assistant())], ["[{\"role\": \"user\""],
    ])
    assert f"{path}:3: 'messages': not valid JSON (Expecting" in failure(path)


# --- validation: every reason, with its location -------------------------------------------------


def chat(*messages: tuple) -> dict:
    """{"messages": ...} from (role, content) or (role, content, extra fields) tuples."""
    return {"messages": [{"role": m[0], "content": m[1], **(m[2] if len(m) > 2 else {})} for m in messages]}


BAD_CHAT_LINES = [  # (line content, the reason read_records gives for it; None: the line is good)
    ({"question": "q", "answer": "a"}, "unknown format: keys ['answer', 'question']"),
    ("{\"messages\": [", "invalid JSON: Expecting value (column 15)"),
    (chat(("user", "q"), ("assistant", "a")), None),
    ({"messages": []}, "'messages' must be a non-empty list of messages"),
    ({"messages": "hello"}, "'messages' must be a list of messages, got the text 'hello'"),  # issue 22 case 9
    ({"messages": "[not json"}, "'messages': not valid JSON (Expecting value)"),
    (chat(("robot", "beep"), ("assistant", "a")), "messages[0].role: unknown role 'robot'"),
    (chat(("user", "q"), ("assistant", "a"), ("assistant", "b")), "turn 3: two assistant messages in a row"),
    (chat(("user", "q"), ("user", "q2"), ("assistant", "a")), "turn 2: two user messages in a row"),
    (chat(("user", "q"), ("assistant", "  ")), "messages[1].content: empty assistant message (nothing to train on)"),
    (chat(("user", "q"), ("assistant", "a", {"weight": 0})), "no assistant message to train on"),
    (chat(("user", ""), ("assistant", "a")), "messages[0].content: empty user message"),
    (chat(("user", "q"), ("assistant", "a", {"weight": 0.5})), "messages[1].weight: must be 0 or 1, got 0.5"),
    (chat(("user", "q"), ("tool", "42"), ("assistant", "a")), "turn 2: a tool result must follow an assistant turn that calls a tool"),
    (chat(("assistant", "a"), ("user", "q")), "the conversation must start with a user message"),
    (chat(("user", "q"), ("assistant", "a"), ("system", "s")), "a system message may only come first"),
    (chat(("user", "q"), ("assistant", "", {"tool_calls": [{"function": {"arguments": "{}"}}]})),
     "messages[1].tool_calls[0]: a tool call needs a function name"),
    (chat(("user", "q"), ("assistant", "", {"tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]})),
     "messages[1].tool_calls[0].arguments: not valid JSON"),
    (chat(("user", [{"type": "image_url", "image_url": {"url": "x"}}]), ("assistant", "a")),
     "messages[0].content: only text parts can be trained on"),
]


def test_every_bad_chat_record_is_reported_with_its_line_and_reason(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [line for line, _ in BAD_CHAT_LINES])
    with path.open("ab") as handle:  # and a line that is not UTF-8
        handle.write(b"{\"text\": \"caf\xe9\"}\n")
    message = failure(path)
    expected = [(number, reason) for number, (_, reason) in enumerate(BAD_CHAT_LINES, start=1) if reason]
    expected.append((len(BAD_CHAT_LINES) + 1, "not valid UTF-8 (byte 13 of the line)"))
    assert message.startswith(f"{path}: {len(expected)} invalid record(s):\n")
    for number, reason in expected:
        assert f"  {path}:{number}: {reason}" in message
    assert f"{path}:3:" not in message


def test_alpaca_missing_fields_and_bad_history(tmp_path):
    path = write_lines(tmp_path / "alpaca.jsonl", [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer"},
        {"instruction": "  ", "output": "x"},
        {"instruction": "q", "input": 7, "output": "x"},
        {"instruction": "q", "output": "x", "history": [["only one"]]},
        {"instruction": "q", "output": "x", "history": {"q": "a"}},
    ])
    message = failure(path)
    assert "5 invalid record(s)" in message
    assert f"{path}:2: 'output' is missing or empty" in message
    assert f"{path}:3: 'instruction' is missing or empty" in message
    assert f"{path}:4: 'input' must be a string, got int" in message
    assert f"{path}:5: history[0] must be an [instruction, response] pair of non-empty strings" in message
    assert f"{path}:6: 'history' must be a list of [instruction, response] pairs" in message


def test_preference_feedback_text_and_classification_problems(tmp_path):
    preference = write_lines(tmp_path / "pref.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "", "rejected": "b"},
        {"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "chosen": "c", "rejected": "r"},
        {"input": "not an object", "preferred_output": [], "non_preferred_output": []},
    ])
    message = failure(preference)
    assert "5 invalid record(s)" in message
    assert f"{preference}:2: 'chosen' and 'rejected' are the same reply; nothing to prefer" in message
    assert f"{preference}:3: 'chosen' is missing or empty" in message
    assert f"{preference}:4: 'chosen' must be the assistant's reply" in message
    assert f"{preference}:5: the conversation must end with a user (or tool) message" in message
    assert f"{preference}:6: 'input' must be an object with the prompt's messages" in message

    feedback = write_lines(tmp_path / "kto.jsonl", [
        {"messages": user_assistant(), "label": "maybe"},
        {"messages": [{"role": "user", "content": "q"}], "label": True},
    ])
    message = failure(feedback)
    assert f"{feedback}:1: 'label' must be true or false, got 'maybe'" in message
    assert f"{feedback}:2: no assistant message to train on" in message

    texts = write_lines(tmp_path / "text.jsonl", [{"text": "fine"}, {"text": "  "}, {"text": 5}])
    message = failure(texts)
    assert f"{texts}:2: 'text' is missing or empty" in message
    assert f"{texts}:3: 'text' must be a string, got int" in message

    labels = write_lines(tmp_path / "labels.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": ""},
                                                     {"text": "c", "label": None}])
    message = failure(labels)
    assert f"{labels}:2: 'label' must be a class name (string or number), got ''" in message
    assert f"{labels}:3: 'label' must be a class name (string or number), got None" in message


def test_a_record_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", [{"text": "ok"}, "[1, 2]", "\"just text\""])
    message = failure(path)
    assert f"{path}:2: each record must be a JSON object, got list" in message
    assert f"{path}:3: each record must be a JSON object, got str" in message


def test_report_counts_alike_problems_together(tmp_path):
    path = write_lines(tmp_path / "roles.jsonl", [
        chat(("user", "q"), ("assistant", "a")),
        chat(("robot", "q"), ("assistant", "a")),
        chat(("user", "q"), ("wizard", "a")),
        chat(("user", "q"), ("assistant", "a"), ("assistant", "b")),
    ])
    problems = [item for item in SourceReader(str(path), "auto", Mapping()) if isinstance(item, Problem)]
    assert [p.location for p in problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    counts = DataReport(invalid=problems).as_dict()["invalid_by_reason"]
    assert counts == {"unknown role …": 2, "turn …: two assistant messages in a row": 1}


# --- "a file with a broken line 7 fails naming line 7" -------------------------------------------


def broken_jsonl(path: Path) -> Path:
    good = [{"text": f"line {n}"} for n in range(1, 11)]
    return write_lines(path.with_suffix(".jsonl"), [*good[:6], "{\"text\": \"line 7\",,}", *good[7:]])


def broken_array_element(path: Path) -> Path:
    """A JSON array whose third element starts on line 7 and has an unknown role."""
    first, second = chat(("user", "a"), ("assistant", "b")), chat(("user", "c"), ("assistant", "d"))
    text = ("[\n" + f"  {json.dumps(first)},\n" + f"  {json.dumps(second)},\n" + "\n\n\n"
            + "  {\"messages\": [{\"role\": \"oracle\", \"content\": \"x\"},\n"
            + "                {\"role\": \"assistant\", \"content\": \"y\"}]}\n]\n")
    path = path.with_suffix(".json")
    path.write_text(text)
    assert text.splitlines()[6].startswith("  {\"messages\": [{\"role\": \"oracle\"")
    return path


def broken_array_syntax(path: Path) -> Path:
    lines = ["["] + [f"  {{\"text\": \"record {n}\"}}," for n in range(2, 7)] + ["  {\"text\": \"record 7\" \"oops\"},", "  {\"text\": \"x\"}", "]"]
    path = path.with_suffix(".json")
    path.write_text("\n".join(lines) + "\n")
    return path


def broken_csv(path: Path) -> Path:
    rows = [["text", "label"]] + [[f"row {n}", "a"] for n in range(2, 7)] + [["row 7 has", "three", "cells"], ["row 8", "b"]]
    return write_csv(path.with_suffix(".csv"), rows)


@pytest.mark.parametrize("make,reason", [
    (broken_jsonl, "invalid JSON: Expecting property name enclosed in double quotes"),
    (broken_array_element, "messages[0].role: unknown role 'oracle'"),
    (broken_array_syntax, "invalid JSON: Expecting ',' delimiter"),
    (broken_csv, "expected 2 columns (text, label), got 3"),
])
def test_a_broken_line_7_is_named(tmp_path, make, reason):
    path = make(tmp_path / "data")
    message = failure(path)
    assert "1 invalid record(s)" in message
    assert f"  {path}:7: {reason}" in message


def test_other_real_world_shapes_read_without_mapping(tmp_path):
    """Anthropic HH transcripts, UltraFeedback-style sides that repeat the prompt, Dolly's column names."""
    hh = {"chosen": "\n\nHuman: What is rain?\n\nAssistant: Water falling from clouds.",
          "rejected": "\n\nHuman: What is rain?\n\nAssistant: No idea."}
    ultra = {"prompt": "Name a prime.", "chosen": [{"role": "user", "content": "Name a prime."},
                                                   {"role": "assistant", "content": "7"}],
             "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}]}
    dolly = {"instruction": "Summarise.", "context": "Tides rise and fall.", "response": "Tides move.",
             "category": "summarization"}
    [first] = read_records(write_jsonl(tmp_path / "hh.jsonl", [hh]))
    assert [(m.role, m.content) for m in first.messages] == [("user", "What is rain?")]
    assert [m.content for m in first.chosen] == ["Water falling from clouds."]
    assert [m.content for m in first.rejected] == ["No idea."]
    [second] = read_records(write_jsonl(tmp_path / "ultra.jsonl", [ultra]))
    assert [m.content for m in second.messages] == ["Name a prime."]
    assert [m.content for m in second.chosen] == ["7"] and [m.content for m in second.rejected] == ["8"]
    [third] = read_records(write_jsonl(tmp_path / "dolly.jsonl", [dolly]))
    assert [(m.role, m.content) for m in third.messages] == [
        ("user", "Summarise.\nTides rise and fall."), ("assistant", "Tides move.")]


def test_ultrafeedback_and_orca_dpo_shapes(tmp_path):
    ultra = {"prompt": "Name a prime.", "prompt_id": "x1",
             "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
             "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}],
             "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
             "score_chosen": 9.0, "score_rejected": 2.0}
    orca = {"system": "Be exact.", "question": "What is 2+2?", "chosen": "4.", "rejected": "5."}
    [first] = read_records(write_jsonl(tmp_path / "ultra.jsonl", [ultra]))
    assert [(m.role, m.content) for m in first.messages] == [("user", "Name a prime.")]
    assert [m.content for m in first.chosen] == ["7"]
    [second] = read_records(write_jsonl(tmp_path / "orca.jsonl", [orca]))
    assert [(m.role, m.content) for m in second.messages] == [("system", "Be exact."), ("user", "What is 2+2?")]
    assert [m.content for m in second.rejected] == ["5."]


def test_a_weight_on_a_user_turn_is_accepted_and_only_assistant_weights_train(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [{"messages": [
        {"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "hello", "weight": 1}]}])
    [record] = read_records(path)
    assert [m.trained for m in record.messages] == [False, True]
