"""Render a conversation with the tokenizer's chat template and mark which tokens are trained.

Labels are -100 everywhere except the content of trained assistant messages and the
end-of-turn token that follows each (so the model learns to stop).  The conversation is
rendered once, each message's content is found in the rendered text in order, and token
offsets map characters to tokens.  This works for any template that writes message content
verbatim, and does not assume that rendering a prefix yields a prefix of the full render
(templates that drop reasoning from earlier turns break that assumption).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.records import ChatExample
from tuneforge.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    replay: bool = False  # mixed in against forgetting (see data/replay.py), not the user's task

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def without_end_of_turn(tokens: TokenizedExample, stop_ids: list[int]) -> TokenizedExample:
    """Stop training the final end-of-turn token, for a reply that was cut off rather than finished."""
    labels = tokens.labels[:]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    if trained and labels[trained[-1]] in stop_ids:
        labels[trained[-1]] = IGNORE
    return TokenizedExample(tokens.input_ids, labels, tokens.replay)


def tokenize_example(example: ChatExample, tokenizer, stop_ids: list[int]) -> TokenizedExample:
    if not tokenizer.chat_template:
        raise DataError("the model's tokenizer has no chat template; chat data needs one")
    text = tokenizer.apply_chat_template(example.as_dicts(), tokenize=False)
    trained_spans = assistant_spans(example, text)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    labels = [IGNORE] * len(input_ids)
    stops = set(stop_ids)
    for span_start, span_end, turn_end in trained_spans:
        last = None
        for index, (start, end) in enumerate(offsets):
            if start < span_end and end > span_start and end > start:
                labels[index] = input_ids[index]
                last = index
        # The end-of-turn token: the first stop token after the content, before the next message.
        for index in range((last or 0) + 1, len(input_ids)):
            if offsets[index][0] >= turn_end:
                break
            if input_ids[index] in stops:
                labels[index] = input_ids[index]
                break
    return TokenizedExample(input_ids, labels)


def assistant_spans(example: ChatExample, text: str) -> list[tuple[int, int, int]]:
    """(content start, content end, start of the next message's content) per trained assistant turn."""
    located: list[tuple[int, int]] = []
    cursor = 0
    for message in example.messages:
        content = message.content.strip()
        if not content:
            located.append((cursor, cursor))
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise DataError(
                f"{example.source}: the chat template did not write a {message.role} message verbatim, "
                "so its tokens cannot be located"
            )
        located.append((start, start + len(content)))
        cursor = start + len(content)
    spans = []
    for index, message in enumerate(example.messages):
        if message.trained:
            start, end = located[index]
            turn_end = located[index + 1][0] if index + 1 < len(located) else len(text)
            spans.append((start, end, turn_end))
    return spans
