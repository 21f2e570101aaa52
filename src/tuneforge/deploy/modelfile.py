"""The Ollama Modelfile beside an exported model.gguf: FROM, TEMPLATE (Go template syntax), SYSTEM, PARAMETER stop.

Ollama formats a conversation with the Modelfile's Go template, not with the Jinja chat template in
the GGUF metadata, so the TEMPLATE must render exactly what the model was trained on. Rather than
translating Jinja (which cannot be done in general), the model's chat template is recognised as
one of the formats below by rendering probe conversations with it and comparing, text for text,
with the format's own rendering; the format's Go template then goes into the Modelfile. A default
system prompt the Jinja template inserts (SmolLM's "You are a helpful AI assistant named SmolLM
...") becomes the Modelfile's SYSTEM, which Ollama inserts the same way when a request has no
system message. An unrecognised template gets a Modelfile without TEMPLATE and a warning (Ollama
then guesses from the GGUF's template). Pinned by tests/deploy/test_gguf.py::test_modelfile_*.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class ChatFormat:
    name: str
    turn: Callable[[str, str], str]  # (role, content) -> the turn as the model sees it
    generation: str  # what follows the last turn when the assistant is to answer
    go_template: str  # the same, in Ollama's Go template syntax over .Messages


CHATML = ChatFormat(
    "ChatML", lambda role, content: f"<|im_start|>{role}\n{content}<|im_end|>\n", "<|im_start|>assistant\n",
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")
LLAMA3 = ChatFormat(
    "Llama 3", lambda role, content: f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n{{- end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n")
FORMATS = (CHATML, LLAMA3)
PROBES = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three"}],
)


@dataclass(frozen=True)
class Recognised:
    format: ChatFormat
    prefix: str  # text the template puts before the first turn (Llama 3's BOS), added by the tokenizer in llama.cpp
    default_system: str | None


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def formatted(recognised: Recognised, messages: list[dict]) -> str:
    if messages[0]["role"] != "system" and recognised.default_system is not None:
        messages = [{"role": "system", "content": recognised.default_system}, *messages]
    turns = "".join(recognised.format.turn(m["role"], m["content"]) for m in messages)
    return recognised.prefix + turns + recognised.format.generation


def recognise(tokenizer) -> Recognised | None:
    """The format the tokenizer's chat template renders, checked on every probe conversation; None if none fits."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        first = render(tokenizer, PROBES[0])
    except Exception:  # a template that refuses the probes is not one of these formats
        return None
    for chat_format in FORMATS:
        tail = chat_format.turn("user", "Hi there") + chat_format.generation
        if not first.endswith(tail):
            continue
        head = first[: len(first) - len(tail)]
        system_open, _, system_close = chat_format.turn("system", "\x00").partition("\x00")
        start = head.find(system_open)
        if start >= 0 and head.endswith(system_close):
            candidate = Recognised(chat_format, head[:start], head[start + len(system_open): len(head) - len(system_close)])
        else:
            candidate = Recognised(chat_format, head, None)
        if all(safe_render(tokenizer, probe) == formatted(candidate, probe) for probe in PROBES):
            return candidate
    return None


def safe_render(tokenizer, messages: list[dict]) -> str | None:
    try:
        return render(tokenizer, messages)
    except Exception:
        return None


def quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def write(path: Path, tokenizer, stop_ids: list[int], gguf_name: str = "model.gguf") -> str | None:
    """Write the Modelfile; returns a warning when the chat template was not recognised (no TEMPLATE written)."""
    lines = [f"FROM ./{gguf_name}"]
    recognised = recognise(tokenizer)
    if recognised is not None:
        lines.append(f"TEMPLATE {quoted(recognised.format.go_template)}")
        if recognised.default_system is not None:
            lines.append(f"SYSTEM {quoted(recognised.default_system)}")
    for token in dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids)):
        lines.append(f'PARAMETER stop "{token}"')
    path.write_text("\n".join(lines) + "\n")
    if recognised is None:
        return ("the chat template is not one the Modelfile's TEMPLATE can reproduce (ChatML, Llama 3); the Modelfile "
                "has no TEMPLATE, so Ollama picks one from the GGUF's chat template: check its replies")
    return None
