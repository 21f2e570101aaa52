"""Turning a served sequence's tokens into safe-to-send text: held-back partial characters and stop strings.

Choosing the tokens is models/sampling.py's (shared with GRPO's rollouts); this is what only a server
that streams text needs.
"""

from __future__ import annotations


class TextStream:
    """The text of one reply as its tokens arrive, released only when it can no longer change.

    Held back: a trailing partial UTF-8 character (decoded as U+FFFD) and any tail that could be
    the start of a stop string; a stop string ends the text just before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already released
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated token; return the newly released text (maybe empty)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self.release(text[:cut])
        end = len(text) - held_back(text, self.stop)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        return self.release(text[:end])

    def finish(self) -> str:
        """Everything not yet released, at the end of the reply (no stop string can complete now)."""
        if self.stopped:
            return ""
        return self.release(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def release(self, text: str) -> str:
        piece = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return piece


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
