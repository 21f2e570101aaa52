"""Render a record with the chat template and mark which tokens are trained.

Labels are -100 everywhere except the content of trained assistant messages and the
end-of-turn token that follows each (so the model learns to stop).  The conversation is
rendered once, each message's content is found in the rendered text in order, and token
offsets map characters to tokens.  This works for any template that writes message content
verbatim, and does not assume that rendering a prefix yields a prefix of the full render
(templates that drop reasoning from earlier turns break that assumption).

Tool calls are written into the assistant's text as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
lines, so they are trained as text with any template; tool schemas go to the template's own
`tools` support when it has one, else into the system message.  Text records (continued
pretraining) train on every token, with the tokenizer's EOS appended.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tuneforge.data.records import Message, Record
from tuneforge.errors import DataError
from tuneforge.models.token_loss import IGNORE

TOOLS_PREAMBLE = "You can call these tools. To call one, reply with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.\n"


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    replay: bool = False  # mixed in against forgetting (see data/replay.py), not the user's task

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[tuple[int, int, int]]  # (trained start, trained end, where the turn ends) in characters


def without_end_of_turn(tokens: TokenizedExample, stop_ids: list[int]) -> TokenizedExample:
    """Stop training the final end-of-turn token, for a reply that was cut off rather than finished."""
    labels = tokens.labels[:]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    if trained and labels[trained[-1]] in stop_ids:
        labels[trained[-1]] = IGNORE
    return TokenizedExample(tokens.input_ids, labels, tokens.replay)


def message_text(message: Message) -> str:
    """What the template writes for a message: its content, then any tool calls as text."""
    calls = [
        f'<tool_call>{{"name": {json.dumps(c.name, ensure_ascii=False)}, "arguments": {c.arguments}}}</tool_call>'
        for c in message.tool_calls
    ]
    return "\n".join([message.content.strip(), *calls] if message.content.strip() else calls)


def chat_dicts(record: Record, tools_in_template: bool) -> list[dict]:
    messages = [{"role": m.role, "content": message_text(m)} for m in record.messages]
    if record.tools and not tools_in_template:
        preamble = TOOLS_PREAMBLE + record.tools
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{preamble}"}
        else:
            messages.insert(0, {"role": "system", "content": preamble})
    return messages


def render(record: Record, tokenizer) -> Rendered:
    if record.kind == "text":
        bos = tokenizer.bos_token or ""
        text = f"{bos}{record.text}{tokenizer.eos_token or ''}"
        return Rendered(text, [(len(bos), len(text), len(text))])
    if record.kind == "classification":  # trained as a reply: the text asks, the label answers
        record = Record((Message("user", record.text), Message("assistant", str(record.label))), record.source)
    if record.kind != "chat":
        raise DataError(f"{record.source}: {record.kind} records cannot be rendered as a chat to train on")
    if not tokenizer.chat_template:
        raise DataError(
            "the model's tokenizer has no chat template; chat data needs one: "
            "set data.template to chatml, llama3 or alpaca"
        )
    tools_in_template = "tools" in tokenizer.chat_template
    kwargs = {"tools": json.loads(record.tools)} if record.tools and tools_in_template else {}
    messages = chat_dicts(record, tools_in_template)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # jinja raises its own errors (e.g. raise_exception in the template)
        raise DataError(f"{record.source}: the chat template cannot render this conversation: {exc}") from None
    return Rendered(text, trained_spans(record, messages, text))


def trained_spans(record: Record, messages: list[dict], text: str) -> list[tuple[int, int, int]]:
    """(content start, content end, start of the next message's content) per trained assistant turn."""
    offset = len(messages) - len(record.messages)  # a system message added for tool schemas
    located: list[tuple[int, int]] = []
    cursor = 0
    for message in messages:
        content = message["content"].strip()
        if not content:
            located.append((cursor, cursor))
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise DataError(
                f"{record.source}: the chat template did not write a {message['role']} message verbatim, "
                "so its tokens cannot be located"
            )
        located.append((start, start + len(content)))
        cursor = start + len(content)
    spans = []
    for index, message in enumerate(record.messages):
        if message.trained:
            start, end = located[index + offset]
            turn_end = located[index + offset + 1][0] if index + offset + 1 < len(located) else len(text)
            spans.append((start, end, turn_end))
    return spans


def mask(input_ids: list[int], offsets: list[tuple[int, int]], spans, stops: set[int]) -> list[int]:
    labels = [IGNORE] * len(input_ids)
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    for span_start, span_end, turn_end in spans:
        # Tokens overlapping [span_start, span_end): end > span_start and start < span_end.
        first = bisect_right(ends, span_start)
        last = None
        for index in range(first, bisect_left(starts, span_end)):
            if offsets[index][1] > offsets[index][0]:
                labels[index] = input_ids[index]
                last = index
        # The end-of-turn token: the first stop token after the content, before the next message.
        for index in range((last if last is not None else first) + 1, len(input_ids)):
            if offsets[index][0] >= turn_end:
                break
            if input_ids[index] in stops:
                labels[index] = input_ids[index]
                break
    return labels


def tokenize_records(records: Sequence[Record], tokenizer, stop_ids: list[int]) -> list[TokenizedExample]:
    """Render and tokenize many records in one tokenizer call (the fast tokenizer batches in Rust)."""
    rendered = [render(record, tokenizer) for record in records]
    if not rendered:
        return []
    texts = [r.text for r in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: skips transformers' per-example conversion (~15%)
        with unpadded(backend):
            encodings = backend.encode_batch(texts, add_special_tokens=False)
        pairs = [(e.ids, e.offsets) for e in encodings]
    else:
        encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        pairs = list(zip(encoding["input_ids"], encoding["offset_mapping"]))
    stops = set(stop_ids)
    return [TokenizedExample(ids, mask(ids, offsets, r.spans, stops)) for r, (ids, offsets) in zip(rendered, pairs)]


@contextmanager
def unpadded(backend):
    """The Rust tokenizer with padding and truncation off for the block, restored afterwards.

    transformers turns the backend's padding on for a call with padding=True and leaves it on:
    after one batched generation (left padding, models/generate.py) every later `encode_batch`
    came back left-padded to the batch's longest text, pad tokens and all (replay records and
    eval perplexities were computed on such rows until this was found).
    """
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        yield backend
    finally:
        if padding:
            backend.enable_padding(**padding)
        if truncation:
            backend.enable_truncation(**truncation)


def tokenize_example(record: Record, tokenizer, stop_ids: list[int]) -> TokenizedExample:
    return tokenize_records([record], tokenizer, stop_ids)[0]
