"""The terminal chat: stream each reply as it is generated and keep the conversation.

Commands inside the chat: /reset forgets the conversation, /exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console

from tuneforge.models.generate import Sampling, stream_reply


def start_messages(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def stream_to(out: TextIO, model, tokenizer, messages: list[dict], sampling: Sampling) -> str:
    pieces = []
    for piece in stream_reply(model, tokenizer, messages, sampling):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    return "".join(pieces).strip()


def answer_once(model, tokenizer, prompt: str, system: str | None, sampling: Sampling, out: TextIO) -> str:
    messages = start_messages(system) + [{"role": "user", "content": prompt}]
    return stream_to(out, model, tokenizer, messages, sampling)


def chat_loop(model, tokenizer, system: str | None, sampling: Sampling, console: Console) -> None:
    console.print("[dim]chat: /reset starts over, /exit or Ctrl-D leaves[/]")
    messages = start_messages(system)
    while True:
        try:
            user = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if user.strip() in ("/exit", "/quit"):
            return
        if user.strip() == "/reset":
            messages = start_messages(system)
            console.print("[dim]conversation cleared[/]")
            continue
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        console.print("[bold green]model>[/] ", end="")
        reply = stream_to(console.file, model, tokenizer, messages, sampling)
        messages.append({"role": "assistant", "content": reply})
