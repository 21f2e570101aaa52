"""`tuneforge data inspect` and `tuneforge data prepare`: their parsers, and the functions that run them."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def add_parsers(commands) -> None:
    """`data` with its two actions, each run by the function of its name."""
    data = commands.add_parser("data", help="inspect or prepare data", description="Inspect or prepare data.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = data_commands.add_parser(
        "inspect", help="format, counts, token lengths, duplicates, PII and problems of data files",
        description="Read data files (JSONL, JSON, CSV, Parquet, text; folders, globs, hf:NAME) and print the "
        "detected format, record and role counts, a token-length histogram under the model's tokenizer, "
        "exact duplicates, PII found, and every record that training would reject, with its line.")
    inspect.add_argument("files", nargs="+", metavar="FILE", help="file, folder, glob or hf:NAME[#SPLIT]")
    inspect.add_argument("--config", type=Path, metavar="RUN.yaml",
                         help="take model, format, columns, roles, template and max_seq_length from a run file")
    inspect.add_argument("--model", help="tokenizer to measure with (default: the embedded model)")
    inspect.add_argument("--format", help="auto (default), chat, sharegpt, alpaca, preference, feedback, text, classification")
    inspect.add_argument("--template", help="tokenizer (default), chatml, llama3 or alpaca")
    inspect.add_argument("--max-seq-length", type=int, help="flag records longer than this (default 1024)")
    inspect.add_argument("--report", type=Path, metavar="DIR", help="also write DIR/index.html with PNG charts")
    inspect.set_defaults(func=run_inspect)
    prep = data_commands.add_parser(
        "prepare", help="validate, clean, tokenize and cache a run's data",
        description="Validate, clean, split and tokenize the data a run file names, into a cache keyed by the "
        "content of the inputs, the tokenizer and the settings; `tuneforge train` then starts from it.")
    prep.add_argument("config", type=Path, metavar="RUN.yaml")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value (repeatable)")
    prep.set_defaults(func=run_prepare)


def run_prepare(args, console: Console) -> int:
    from tuneforge.config import load_config  # pydantic: kept out of `tuneforge --help`

    config = load_config(args.config, args.overrides)
    from tuneforge.data.prepare import describe, prepare  # torch, transformers
    from tuneforge.models.tokenizer import training_tokenizer  # transformers

    tokenizer, stop_ids = training_tokenizer(config.model.name, config.data.template)
    prepared = prepare(config.data, tokenizer, stop_ids, config.train.max_seq_length, config.train.seed)
    console.print(describe(prepared), highlight=False)
    return 0


def run_inspect(args, console: Console) -> int:
    from tuneforge.config import load_config  # pydantic: kept out of `tuneforge --help`
    from tuneforge.data.inspect import inspect_command  # numpy

    config = load_config(args.config) if args.config else None
    return inspect_command(args, config, Console())
