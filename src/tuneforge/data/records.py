"""The one in-memory record every input format converts into; nothing downstream knows the source format.

A record is a conversation (chat), a prompt with a preferred and a rejected reply (preference),
a conversation with a good/bad label (unpaired feedback, KTO style), a plain text (continued
pretraining) or a text with a class label (classification).  `kind` says which fields are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ROLES = ("system", "user", "assistant", "tool")
Kind = Literal["chat", "preference", "feedback", "text", "classification"]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI format carries it


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # Whether the loss covers this message: None means the default (assistant turns only);
    # 0/1 mirror the OpenAI fine-tuning format's per-message `weight`.
    weight: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and (self.weight is None or self.weight > 0)


@dataclass(frozen=True)
class Record:
    messages: tuple[Message, ...]  # chat: the conversation; preference: the prompt; feedback: prompt + reply
    source: str  # "file:line" or "file[index]", for error messages and data manifests
    kind: Kind = "chat"
    tools: str | None = None  # JSON text of the tool schemas offered to the model
    chosen: tuple[Message, ...] = ()  # preference: the preferred reply
    rejected: tuple[Message, ...] = ()  # preference: the rejected reply
    # feedback: whether the reply is desirable; classification: the class, or (multi-label) the sorted classes
    label: bool | str | tuple[str, ...] | None = None
    text: str = ""  # text and classification records

    def as_dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def prompt_text(self) -> str:
        """What the model is asked: the user-side text, for duplicate and contamination checks."""
        if self.kind in ("text", "classification"):
            return self.text
        return "\n".join(m.content for m in self.messages if m.role in ("system", "user"))

    def full_text(self) -> str:
        """Everything the record says, for exact-duplicate detection and PII counts."""
        if self.kind in ("text", "classification"):
            return f"{self.text}\n{self.label}" if self.kind == "classification" else self.text
        parts = [f"{m.role}: {m.content} {' '.join(c.arguments for c in m.tool_calls)}" for m in self.messages]
        parts += [f"chosen: {m.content}" for m in self.chosen] + [f"rejected: {m.content}" for m in self.rejected]
        if self.kind == "feedback":
            parts.append(f"label: {self.label}")
        return "\n".join(parts)
