"""The one in-memory record every input format converts into; nothing downstream knows the source format."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # Whether the loss covers this message: None means the default (assistant turns only);
    # 0/1 mirror the OpenAI fine-tuning format's per-message `weight`.
    weight: float | None = None

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and (self.weight is None or self.weight > 0)


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]
    source: str  # "file:line" or "file[index]", for error messages and data manifests

    def as_dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]
