"""Prompt records of task: grpo (data/prompts.py): TRL's and OpenAI's shapes read alike, bad ones named by line."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.prompts import messages, read_prompts
from tuneforge.errors import DataError


def write(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_trl_and_openai_shapes_give_the_same_prompt_and_keep_the_other_columns(tmp_path):
    turn = [{"role": "user", "content": "2+2?"}]
    rows = read_prompts([write(tmp_path / "p.jsonl", [
        {"prompt": "2+2?", "answer": "4"},
        {"prompt": turn, "answer": "4"},
        {"messages": turn, "reference_answer": "4"},  # OpenAI's reinforcement fine-tuning file
    ])])
    assert [messages(r) for r in rows] == [turn] * 3
    assert rows[2] == {"prompt": turn, "reference_answer": "4"}


def test_every_bad_record_is_named_by_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", [
        {"prompt": "fine"},
        {"answer": "no prompt"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "not json",
        {"prompt": "   "},
    ])
    with pytest.raises(DataError) as raised:
        read_prompts([path])
    message = str(raised.value)
    assert message.startswith("4 bad prompt record(s)")
    assert f"{path}:2: missing 'prompt'" in message
    assert f"{path}:3: 'prompt' messages must end with the user's turn" in message
    assert f"{path}:4:" in message and f"{path}:5: 'prompt' is empty" in message
