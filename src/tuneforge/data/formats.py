"""Convert raw records of every common dataset format into canonical `Record`s, or say why not.

Formats (auto-detected from a file's first record, or named in `data.format`):
- chat: OpenAI fine-tuning JSONL (`messages` with system/user/assistant/tool roles, `tool_calls`,
  per-message `weight` 0/1, optional `tools`);
- sharegpt: `conversations` of `from`/`value` (human, gpt, system, function_call, observation),
  optional `system` and `tools` columns;
- alpaca: `instruction`/`input`/`output`, optional `system` and `history`;
- preference: prompt + chosen + rejected (sharegpt style, TRL style, alpaca style) or the OpenAI
  DPO shape (`input`, `preferred_output`, `non_preferred_output`);
- feedback: a conversation (or prompt + completion) with a boolean `label` (KTO style);
- text: `text` (continued pretraining); classification: `text` + `label`.
`data.columns` maps canonical keys to a file's own keys and `data.roles` maps its role names,
so files whose keys differ need no rewriting.  Every failure is a ValueError whose message
says which field is wrong; the caller adds the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tuneforge.data.readers import read
from tuneforge.data.records import ROLES, Message, Record, ToolCall
from tuneforge.errors import DataError

Format = Literal["auto", "chat", "sharegpt", "alpaca", "preference", "feedback", "text", "classification"]
FORMATS: tuple[str, ...] = Format.__args__[1:]  # type: ignore[attr-defined]

ROLE_ALIASES = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "tool": "tool", "observation": "tool", "function": "tool",
    "ipython": "tool", "function_call": "function_call",
}
NESTED = ("messages", "conversations", "chosen", "rejected", "chosen_messages", "rejected_messages", "preferred_output", "non_preferred_output", "input")


@dataclass(frozen=True)
class Mapping:
    """A file's own names: canonical key -> the file's key, and the file's role names -> canonical roles."""

    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def role_table(self) -> dict[str, str]:
        return {**ROLE_ALIASES, **{k.lower(): v for k, v in self.roles.items()}}


def remap(value: dict, mapping: Mapping) -> dict:
    """Rename the file's keys to canonical ones, at the top level and inside message objects."""
    if not mapping.columns:
        return value
    renamed = {file_key: canonical for canonical, file_key in mapping.columns.items()}

    def rename(obj: dict) -> dict:
        return {renamed.get(key, key): item for key, item in obj.items()}

    out = rename(value)
    for key in NESTED:
        item = out.get(key)
        if key in ("messages", "conversations") and isinstance(item, str):
            item = structured(item, f"'{key}'")  # a CSV cell: rename the keys inside it too
        if isinstance(item, list):
            out[key] = [rename(m) if isinstance(m, dict) else m for m in item]
        elif isinstance(item, dict):
            out[key] = rename(item) if key != "input" else remap(item, mapping)
    return out


def detect(value: dict) -> str:
    if "preferred_output" in value or "non_preferred_output" in value:
        return "preference"
    if ("chosen" in value and "rejected" in value) or "chosen_messages" in value:
        return "preference"
    if "label" in value and any(k in value for k in ("messages", "conversations", "completion")):
        return "feedback"
    if "messages" in value:
        return "chat"
    if "conversations" in value:
        return "sharegpt"
    if "instruction" in value:
        return "alpaca"
    if "text" in value:
        return "classification" if "label" in value else "text"
    raise ValueError(
        f"unknown format: keys {sorted(value)[:12]}; expected one of: messages (chat), conversations (sharegpt), "
        "instruction/output (alpaca), chosen/rejected or preferred_output (preference), "
        "messages + label (feedback), text (text), text + label (classification); "
        "or map your keys with data.columns"
    )


def structured(value: object, where: str) -> object:
    """Lists and objects may arrive as JSON text (CSV cells, the `tools` column of sharegpt files);
    a blank cell is an absent value (a CSV row has every column, filled or not)."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
    return value


def text_field(value: dict, key: str, required: bool) -> str:
    item = value.get(key)
    if item is None:
        item = ""
    if not isinstance(item, str):
        raise ValueError(f"'{key}' must be a string, got {type(item).__name__}")
    if required and not item.strip():
        raise ValueError(f"'{key}' is missing or empty")
    return item


THINKING = ("<think>\n", "\n</think>\n\n")  # how a reasoning part is written into the reply's text


def content_text(content: object, where: str) -> str:
    """A message's content: a string, null (tool-call turns), or a list of parts.

    A part is OpenAI's {"type": "text", "text": ...} or LLaMA-Factory's {"type": "text"|"reasoning", "value": ...};
    a reasoning part (the model's thinking) is written in <think> markup, the markup of the templates that have
    one (Qwen3, DeepSeek-R1), and is trained like the rest of the reply."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = []
        for part in content:
            kind, text = part.get("type", "text"), part.get("text", part.get("value"))
            if kind not in ("text", "reasoning") or not isinstance(text, str):
                raise ValueError(f"{where}.content: only text parts can be trained on (text or reasoning; got a "
                                 f"{kind!r} part)")
            texts.append(f"{THINKING[0]}{text.strip()}{THINKING[1]}" if kind == "reasoning" else text)
        return "".join(texts)
    raise ValueError(f"{where}.content: must be a string, got {type(content).__name__}")


MEDIA_KEYS = ("images", "videos", "audios")
MEDIA_MARKERS = ("<image>", "<video>", "<audio>")


def refuse_media(value: dict) -> None:
    """A record with images, video or audio cannot be trained as text: dropping the media silently would
    teach replies to inputs the model never saw."""
    for key in MEDIA_KEYS:
        if value.get(key):
            raise ValueError(f"'{key}': records with images, video or audio are not supported (text models only)")
    text = json.dumps(value, ensure_ascii=False)
    marker = next((m for m in MEDIA_MARKERS if m in text), None)
    if marker:
        raise ValueError(f"a {marker} marker: records with images, video or audio are not supported (text models only)")


def tool_call(obj: object, where: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a tool call must be an object with name and arguments")
    function = obj.get("function", obj)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: a tool call needs a function name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}.arguments: not valid JSON ({exc.msg})") from None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


def tool_calls(value: object, where: str) -> tuple[ToolCall, ...]:
    value = structured(value, where)  # None, or a blank cell
    if value is None:
        return ()
    calls = value if isinstance(value, list) else [value]
    return tuple(tool_call(call, f"{where}[{index}]") for index, call in enumerate(calls))


def parse_message(obj: object, where: str, roles: dict[str, str]) -> Message:
    """One message in OpenAI (role/content) or sharegpt (from/value) shape."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: must be an object with a role and content")
    raw_role = obj.get("role", obj.get("from"))
    role = roles.get(raw_role.lower()) if isinstance(raw_role, str) else None
    if role is None:
        known = sorted(set(ROLES) | {r for r in roles if roles[r] in ROLES})
        raise ValueError(f"{where}.role: unknown role {raw_role!r}; expected one of {', '.join(known)} (or map it with data.roles)")
    content = content_text(obj["content"] if "content" in obj else obj.get("value"), where)
    calls = tool_calls(obj.get("tool_calls"), f"{where}.tool_calls")
    if obj.get("function_call") is not None:  # the OpenAI format's legacy single call
        calls += tool_calls(obj["function_call"], f"{where}.function_call")
    if role == "function_call":  # sharegpt: the value is the call, as JSON text
        role, calls, content = "assistant", tool_calls(content, f"{where}.value"), ""
    weight = obj.get("weight", obj.get("loss_weight"))  # loss_weight: LLaMA-Factory's name
    if weight is not None:
        if isinstance(weight, bool) or weight not in (0, 1):
            raise ValueError(f"{where}.weight: must be 0 or 1, got {weight!r}")
    if role in ("user", "tool") and not content.strip():
        raise ValueError(f"{where}.content: empty {role} message")
    if role == "assistant" and not content.strip() and not calls:
        raise ValueError(f"{where}.content: empty assistant message (nothing to train on)")
    return Message(role, content, weight, calls)


def message_list(value: dict, key: str, roles: dict[str, str], required: bool = True) -> tuple[Message, ...]:
    raw = value.get(key)
    if isinstance(raw, str) and raw.strip() and raw.lstrip()[0] not in "[{":  # plain text, not a JSON-encoded list
        raise ValueError(f"'{key}' must be a list of messages, got the text {raw[:40]!r}")
    items = structured(raw, f"'{key}'")
    if items is None and not required:
        return ()
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or (required and not items):
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    return tuple(parse_message(item, f"{key}[{index}]", roles) for index, item in enumerate(items))


def tools_field(value: dict) -> str | None:
    tools = structured(value.get("tools"), "'tools'")
    if tools in (None, "", []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("'tools' must be a list of tool schemas (objects)")
    return json.dumps(tools, ensure_ascii=False)


def with_system(messages: tuple[Message, ...], value: dict) -> tuple[Message, ...]:
    system = text_field(value, "system", False)
    if system.strip() and not (messages and messages[0].role == "system"):
        return (Message("system", system), *messages)
    return messages


def check_turns(messages: tuple[Message, ...], needs_training: bool = True, ends_with: str | None = None) -> None:
    """Turn order a chat template can render: system first, then user/assistant alternating,
    tool results only after an assistant turn that called a tool."""
    if any(m.role == "system" for m in messages[1:]):
        raise ValueError("a system message may only come first")
    body = [m for m in messages if m.role != "system"]
    if not body or body[0].role != "user":
        raise ValueError("the conversation must start with a user message (after an optional system message)")
    for index, (previous, current) in enumerate(zip(body, body[1:]), start=2):
        if current.role == "tool":
            if not (previous.role == "tool" or previous.tool_calls):
                raise ValueError(f"turn {index}: a tool result must follow an assistant turn that calls a tool")
        elif current.role == "assistant":
            if previous.role not in ("user", "tool"):
                raise ValueError(f"turn {index}: two assistant messages in a row; user and assistant must alternate")
        elif previous.role == "user":
            raise ValueError(f"turn {index}: two user messages in a row; user and assistant must alternate")
        elif previous.role == "tool":
            raise ValueError(f"turn {index}: a tool result must be answered by an assistant message")
    if needs_training and not any(m.trained for m in messages):
        raise ValueError("no assistant message to train on (every assistant turn has weight 0, or there is none)")
    if ends_with and body[-1].role not in ((ends_with,) if ends_with != "prompt" else ("user", "tool")):
        wanted = "a user (or tool) message" if ends_with == "prompt" else f"an {ends_with} message"
        raise ValueError(f"the conversation must end with {wanted}")


def from_chat(value: dict, source: str, roles: dict[str, str]) -> Record:
    messages = message_list(value, "messages", roles)
    check_turns(messages)
    return Record(messages, source, "chat", tools=tools_field(value))


def from_sharegpt(value: dict, source: str, roles: dict[str, str]) -> Record:
    messages = with_system(message_list(value, "conversations", roles), value)
    check_turns(messages)
    return Record(messages, source, "chat", tools=tools_field(value))


def alpaca_prompt(value: dict) -> tuple[Message, ...]:
    extra_key = "input" if "input" in value or "context" not in value else "context"  # Dolly calls it context
    instruction, extra = text_field(value, "instruction", True), text_field(value, extra_key, False)
    messages: list[Message] = []
    history = structured(value.get("history"), "'history'") or []
    if not isinstance(history, list):
        raise ValueError("'history' must be a list of [instruction, response] pairs")
    for index, turn in enumerate(history):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) and t.strip() for t in turn)):
            raise ValueError(f"history[{index}] must be an [instruction, response] pair of non-empty strings")
        messages += [Message("user", turn[0]), Message("assistant", turn[1])]
    messages.append(Message("user", f"{instruction}\n{extra}" if extra.strip() else instruction))
    return with_system(tuple(messages), value)


def from_alpaca(value: dict, source: str, roles: dict[str, str]) -> Record:
    output_key = "output" if "output" in value or "response" not in value else "response"  # Dolly: response
    messages = (*alpaca_prompt(value), Message("assistant", text_field(value, output_key, True)))
    check_turns(messages)
    return Record(messages, source, "chat")


TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ")


def transcript(text: str) -> tuple[Message, ...] | None:
    """An Anthropic HH-style transcript ("\n\nHuman: ...\n\nAssistant: ...") as messages; None if it is not one."""
    parts = TRANSCRIPT_TURN.split(text)
    if len(parts) < 5 or parts[0].strip():
        return None
    return tuple(
        Message("user" if speaker == "Human" else "assistant", content.strip())
        for speaker, content in zip(parts[1::2], parts[2::2])
    )


def reply(value: dict, key: str, roles: dict[str, str]) -> tuple[Message, ...]:
    """A preference side: a string (a reply, or a whole HH-style transcript), one message, or a list of messages."""
    item = structured(value.get(key), f"'{key}'") if not isinstance(value.get(key), str) else value[key]
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"'{key}' is missing or empty")
        return transcript(item) or (Message("assistant", item),)
    return message_list({key: item}, key, roles)


def preference_prompt(value: dict, roles: dict[str, str]) -> tuple[Message, ...]:
    """The prompt of a preference or feedback record, from whichever key the file uses.

    An explicit prompt wins over `messages`, which some files (UltraFeedback) fill with the whole
    chosen conversation; `question` is Orca-DPO's name for it."""
    if "input" in value and isinstance(value["input"], dict):  # OpenAI DPO
        return message_list(value["input"], "messages", roles)
    for key in ("prompt", "question"):
        prompt = value.get(key)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(f"'{key}' is missing or empty")
            return with_system((Message("user", prompt),), value)
        if prompt is not None:
            return with_system(message_list(value, key, roles), value)
    for key in ("conversations", "messages"):
        if key in value:
            return with_system(message_list(value, key, roles), value)
    if "instruction" in value:
        return alpaca_prompt(value)
    return ()


def from_preference(value: dict, source: str, roles: dict[str, str]) -> Record:
    openai = "preferred_output" in value or "non_preferred_output" in value
    chosen_key, rejected_key = ("preferred_output", "non_preferred_output") if openai else ("chosen", "rejected")
    if "chosen_messages" in value:  # LLaMA-Factory: two whole conversations that share the prompt
        chosen_key, rejected_key = "chosen_messages", "rejected_messages"
    if openai and not isinstance(value.get("input"), dict):
        raise ValueError("'input' must be an object with the prompt's messages")
    prompt = preference_prompt(value, roles)
    chosen, rejected = reply(value, chosen_key, roles), reply(value, rejected_key, roles)
    if prompt and chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]  # sides that repeat the prompt
    if not prompt:  # TRL's implicit-prompt shape: both sides are whole conversations sharing the prompt
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    check_turns(prompt, needs_training=False, ends_with="prompt")
    for key, side in ((chosen_key, chosen), (rejected_key, rejected)):
        if any(m.role != "assistant" for m in side[:1]) or side[-1].role != "assistant":
            raise ValueError(f"'{key}' must be the assistant's reply")
    if chosen == rejected:
        raise ValueError(f"'{chosen_key}' and '{rejected_key}' are the same reply; nothing to prefer")
    tools = tools_field(value["input"]) if openai else tools_field(value)
    return Record(prompt, source, "preference", tools=tools, chosen=chosen, rejected=rejected)


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"'label' must be true or false, got {value!r}")


def from_feedback(value: dict, source: str, roles: dict[str, str]) -> Record:
    if "completion" in value:
        prompt = preference_prompt(value, roles)
        messages = (*prompt, *reply(value, "completion", roles))
    else:
        key = "messages" if "messages" in value else "conversations"
        messages = with_system(message_list(value, key, roles), value)
    check_turns(messages, ends_with="assistant")
    return Record(messages, source, "feedback", tools=tools_field(value), label=boolean(value.get("label")))


def from_text(value: dict, source: str, roles: dict[str, str]) -> Record:
    return Record((), source, "text", text=text_field(value, "text", True))


def from_classification(value: dict, source: str, roles: dict[str, str]) -> Record:
    label = value.get("label")
    if isinstance(label, str) and label.lstrip().startswith("["):  # a CSV cell may hold a JSON list
        try:
            parsed = json.loads(label)
        except json.JSONDecodeError:
            parsed = None  # a class named like "[urgent]"
        label = parsed if isinstance(parsed, list) else label
    text = text_field(value, "text", True)
    if isinstance(label, list):  # multi-label: every class that applies, possibly none
        return Record((), source, "classification", text=text, label=tuple(sorted({class_name(x) for x in label})))
    return Record((), source, "classification", text=text, label=class_name(label))


def class_name(label: object) -> str:
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, (str, bool)) or (isinstance(label, str) and not label.strip()):
        raise ValueError(f"'label' must be a class name (string or number), got {label!r}")
    return str(label).strip()


@dataclass(frozen=True)
class Problem:
    """A record that cannot be used, and why; `location` is file:line or file[index]."""

    location: str
    reason: str


def convert(value: object, source: str, fmt: str, mapping: Mapping) -> Record:
    """One raw record -> Record; ValueError says what is wrong with it."""
    try:
        return convert_one(value, source, fmt, mapping)
    except RecursionError:  # JSON text nested too deeply in a field (json.loads / json.dumps)
        raise ValueError("nested too deeply") from None


def convert_one(value: object, source: str, fmt: str, mapping: Mapping) -> Record:
    if not isinstance(value, dict):
        raise ValueError(f"each record must be a JSON object, got {type(value).__name__}")
    value = remap(value, mapping)
    refuse_media(value)
    roles = mapping.role_table()
    match detect(value) if fmt == "auto" else fmt:
        case "chat":
            return from_chat(value, source, roles)
        case "sharegpt":
            return from_sharegpt(value, source, roles)
        case "alpaca":
            return from_alpaca(value, source, roles)
        case "preference":
            return from_preference(value, source, roles)
        case "feedback":
            return from_feedback(value, source, roles)
        case "text":
            return from_text(value, source, roles)
        case "classification":
            return from_classification(value, source, roles)
        case other:
            raise ValueError(f"unknown format {other!r}; expected one of {', '.join(FORMATS)}")


class SourceReader:
    """Every record of one file (or hub dataset), converted.  The format is detected once per file,
    from its first record (`format` holds it after the first record), so a stray record is reported
    as missing that format's fields rather than silently read as another format."""

    def __init__(self, source: str, fmt: str, mapping: Mapping):
        self.source, self.mapping = source, mapping
        self.format: str | None = None if fmt == "auto" else fmt

    def __iter__(self) -> Iterator[Record | Problem]:
        for raw in read(self.source):
            if raw.problem is not None:
                yield Problem(raw.location, raw.problem)
                continue
            try:
                if self.format is None and isinstance(raw.value, dict):
                    self.format = detect(remap(raw.value, self.mapping))
                yield convert(raw.value, raw.location, self.format or "auto", self.mapping)
            except ValueError as exc:
                yield Problem(raw.location, str(exc))
            except RecursionError:
                yield Problem(raw.location, "nested too deeply")


def read_records(source: str | Path, fmt: str = "auto", mapping: Mapping = Mapping(), shown: int = 20) -> list[Record]:
    """All records of one small file, or a DataError listing every bad one (for replay data and tests)."""
    records, problems = [], []
    for item in SourceReader(str(source), fmt, mapping):
        (problems if isinstance(item, Problem) else records).append(item)
    if problems:
        lines = [f"  {p.location}: {p.reason}" for p in problems[:shown]]
        more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
        raise DataError(f"{source}: {len(problems)} invalid record(s):\n" + "\n".join(lines) + more)
    if not records:
        raise DataError(f"{source}: no records")
    return records
