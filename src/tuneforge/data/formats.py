"""Read chat JSONL and alpaca JSON/JSONL files into ChatExamples, reporting every bad record.

Errors name the file and line (JSONL) or record index (JSON array) and say what is wrong,
so a user can fix their file in one pass instead of one error per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tuneforge.data.records import ROLES, ChatExample, Message
from tuneforge.errors import DataError

Format = Literal["auto", "chat", "alpaca"]
MAX_REPORTED = 20


def iter_raw(path: Path) -> Iterator[tuple[str, object]]:
    """(location, parsed JSON value) for each record; a JSON array or JSON Lines."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        for index, record in enumerate(records):
            yield f"{path}[{index}]", record
        return
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        try:  # one pretty-printed object rather than JSON Lines
            yield f"{path}:1", json.loads(text)
            return
        except json.JSONDecodeError:
            pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{number}", DataError(f"invalid JSON: {exc.msg} (column {exc.colno})")


def detect(record: dict) -> Format:
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise ValueError(
        f"unknown format: keys {sorted(record)}; expected 'messages' (chat) or 'instruction'/'output' (alpaca)"
    )


def from_chat(record: dict) -> tuple[Message, ...]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    converted = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content: missing or not a string")
        if role != "system" and not content.strip():
            raise ValueError(f"messages[{index}].content: empty {role} message")
        weight = message.get("weight")
        if weight not in (None, 0, 1):
            raise ValueError(f"messages[{index}].weight: must be 0 or 1, got {weight!r}")
        converted.append(Message(role, content, weight))
    return tuple(converted)


def from_alpaca(record: dict) -> tuple[Message, ...]:
    def text(key: str, required: bool) -> str:
        value = record.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"'{key}' must be a string")
        if required and not value.strip():
            raise ValueError(f"'{key}' is missing or empty")
        return value

    instruction, extra, output = text("instruction", True), text("input", False), text("output", True)
    system = text("system", False)
    messages = [Message("system", system)] if system.strip() else []
    for index, turn in enumerate(record.get("history") or []):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise ValueError(f"history[{index}] must be a [instruction, response] pair of strings")
        messages += [Message("user", turn[0]), Message("assistant", turn[1])]
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [Message("user", prompt), Message("assistant", output)]
    return tuple(messages)


def check_turns(messages: tuple[Message, ...]) -> None:
    body = [m for m in messages if m.role != "system"]
    if any(m.role == "system" for m in messages[1:]):
        raise ValueError("a system message may only come first")
    if not body or body[0].role != "user":
        raise ValueError("the conversation must start with a user message (after an optional system message)")
    for previous, current in zip(body, body[1:]):
        if previous.role == current.role:
            raise ValueError(f"two {current.role} messages in a row; user and assistant must alternate")
    if not any(m.trained for m in messages):
        raise ValueError("no assistant message to train on")


def read_examples(path: Path, fmt: Format = "auto") -> list[ChatExample]:
    """All records of one file, or a DataError listing every bad record (up to MAX_REPORTED)."""
    examples: list[ChatExample] = []
    problems: list[str] = []
    for location, record in iter_raw(path):
        try:
            if isinstance(record, DataError):
                raise ValueError(str(record))
            if not isinstance(record, dict):
                raise ValueError(f"each record must be a JSON object, got {type(record).__name__}")
            kind = detect(record) if fmt == "auto" else fmt
            messages = from_chat(record) if kind == "chat" else from_alpaca(record)
            check_turns(messages)
        except ValueError as exc:
            problems.append(f"  {location}: {exc}")
            continue
        examples.append(ChatExample(messages, location))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} invalid record(s):\n" + "\n".join(shown) + more)
    if not examples:
        raise DataError(f"{path}: no records")
    return examples
