"""`tuneforge chat` and `tuneforge generate`: stream each reply as it is generated and keep the conversation.

Commands inside the chat: /reset forgets the conversation, /exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from rich.console import Console

if TYPE_CHECKING:  # models.generate imports torch, which `tuneforge --help` must not wait for
    from tuneforge.models.generate import Sampling


def add_parsers(commands) -> None:
    """`chat` (a conversation in the terminal) and `generate` (one answer), both run by run_chat."""
    for name, help_text in (("chat", "talk with a model in the terminal"), ("generate", "answer one prompt")):
        sub = commands.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}. "
                                  "MODEL is a run directory, a checkpoint, a local model directory, a hub id, "
                                  "a .gguf file or embedded:smollm2-135m-instruct.")
        sub.add_argument("model", metavar="MODEL")
        if name == "generate":
            sub.add_argument("prompt", help="the user message")
        sub.add_argument("--system", help="system message (default: the chat template's own)")
        sub.add_argument("--max-new-tokens", type=int, default=256)
        sub.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
        sub.add_argument("--top-p", type=float, default=1.0)
        sub.set_defaults(func=run_chat)


def run_chat(args, console: Console) -> int:
    from tuneforge.models.generate import Sampling  # torch
    from tuneforge.models.load import load_for_inference  # torch, transformers

    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    model, tokenizer = load_for_inference(args.model)
    if args.command == "generate":
        answer_once(model, tokenizer, args.prompt, args.system, sampling, sys.stdout)
    else:
        chat_loop(model, tokenizer, args.system, sampling, console)
    return 0


def start_messages(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def stream_to(out: TextIO, model, tokenizer, messages: list[dict], sampling: Sampling) -> str:
    from tuneforge.models.generate import stream_reply  # torch

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
