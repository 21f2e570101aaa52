"""`tuneforge data inspect`: what is in a data file before anything is trained on it.

For each file: the detected format, record kinds, role and turn counts, token lengths under
the model's tokenizer (and how many exceed the sequence length), exact duplicates, PII found,
and every record that would be rejected, with its line.  Reading streams, so a large file is
inspected in one pass with memory for one chunk of records plus a few numbers per record.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tuneforge.data import cleaning
from tuneforge.data.formats import Mapping, Problem, SourceReader
from tuneforge.data.readers import expand
from tuneforge.data.records import Record
from tuneforge.data.template import tokenize_records
from tuneforge.errors import DataError

CHUNK = 512
SHOWN = 20
TRAINABLE = ("chat", "text", "classification")  # rendered as they would be trained


@dataclass
class FileStats:
    path: str
    format: str = "unknown"
    records: int = 0
    kinds: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)  # messages per record -> records
    labels: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)
    too_long: int = 0
    duplicates: int = 0
    pii: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)


def record_tokens(records: list[Record], tokenizer, stop_ids: list[int]) -> list[int]:
    """Token count of each record as it would be trained, or as plain text for kinds not trained yet."""
    trainable = [r for r in records if r.kind in TRAINABLE]
    lengths = {id(r): len(t.input_ids) for r, t in zip(trainable, tokenize_records(trainable, tokenizer, stop_ids))}
    others = [r for r in records if r.kind not in TRAINABLE]
    if others:  # a preference pair is seen as two sequences: prompt + chosen, prompt + rejected
        sides = [[replace(r, rejected=()), replace(r, chosen=())] if r.kind == "preference" else [r] for r in others]
        encoded = iter(tokenizer([s.full_text() for side in sides for s in side], add_special_tokens=False)["input_ids"])
        lengths.update({id(r): max(len(next(encoded)) for _ in side) for r, side in zip(others, sides)})
    return [lengths[id(r)] for r in records]


def inspect_file(path: str, fmt: str, mapping: Mapping, tokenizer, stop_ids: list[int], max_len: int) -> FileStats:
    stats = FileStats(path)
    duplicates = cleaning.ExactDuplicates()
    reader = SourceReader(path, fmt, mapping)
    chunk: list[Record] = []

    def flush() -> None:
        try:
            lengths = record_tokens(chunk, tokenizer, stop_ids)
        except DataError:  # one record the template cannot render: measure one by one to name it
            lengths = []
            for record in chunk:
                try:
                    lengths += record_tokens([record], tokenizer, stop_ids)
                except DataError as exc:
                    stats.problems.append(Problem(record.source, str(exc).removeprefix(f"{record.source}: ")))
                    lengths.append(0)
        for record, length in zip(chunk, lengths):
            stats.lengths.append(length)
            if length > max_len:
                stats.too_long += 1
                stats.problems.append(Problem(record.source, f"{length} tokens, longer than max_seq_length={max_len}"))
        chunk.clear()

    for item in reader:
        if isinstance(item, Problem):
            stats.problems.append(item)
            continue
        stats.records += 1
        stats.kinds[item.kind] += 1
        messages = (*item.messages, *item.chosen, *item.rejected)
        stats.roles.update(m.role for m in messages)
        if messages:
            stats.turns[len(item.messages)] += 1
        if item.kind in ("classification", "feedback"):
            stats.labels[str(item.label)] += 1
        text = item.full_text()
        if not duplicates.first_seen(text):
            stats.duplicates += 1
        stats.pii.update(cleaning.redact_pii(text)[1])
        chunk.append(item)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    stats.format = reader.format or "unknown"
    return stats


def inspect_sources(sources: list[str], fmt: str, mapping: Mapping, tokenizer, stop_ids, max_len: int) -> list[FileStats]:
    return [inspect_file(path, fmt, mapping, tokenizer, stop_ids, max_len) for source in sources for path in expand(source)]


def histogram(lengths: list[int], bins: int = 8) -> list[tuple[str, int]]:
    if not lengths:
        return []
    values = np.asarray(lengths)
    edges = np.unique(np.linspace(0, values.max() + 1, bins + 1).astype(int))
    counts, _ = np.histogram(values, bins=edges)
    return [(f"{edges[i]}-{edges[i + 1] - 1}", int(n)) for i, n in enumerate(counts)]


def length_summary(lengths: list[int]) -> str:
    if not lengths:
        return "-"
    values = np.asarray(lengths)
    return (f"min {values.min()}, median {int(np.median(values))}, p95 {int(np.percentile(values, 95))}, "
            f"max {values.max()}, total {values.sum():,}")


def print_stats(console: Console, stats: FileStats) -> None:
    table = Table(title=stats.path, show_header=False, title_justify="left")
    table.add_row("format", stats.format)
    table.add_row("records", f"{stats.records:,} valid, {len(stats.problems):,} with problems")
    table.add_row("kinds", ", ".join(f"{k} {n:,}" for k, n in stats.kinds.most_common()) or "-")
    if stats.roles:
        table.add_row("roles", ", ".join(f"{k} {n:,}" for k, n in stats.roles.most_common()))
        table.add_row("messages per record", ", ".join(f"{k}: {n:,}" for k, n in sorted(stats.turns.items())))
    if stats.labels:
        table.add_row("labels", ", ".join(f"{k} {n:,}" for k, n in stats.labels.most_common()))
    table.add_row("tokens per record", length_summary(stats.lengths))
    table.add_row("token histogram", "  ".join(f"{edge}: {n:,}" for edge, n in histogram(stats.lengths)) or "-")
    table.add_row("exact duplicates", f"{stats.duplicates:,}")
    table.add_row("PII found", ", ".join(f"{k} {n:,}" for k, n in stats.pii.most_common()) or "none")
    console.print(table)
    for problem in stats.problems[:SHOWN]:
        console.print(f"  [red]{problem.location}[/]: {problem.reason}", highlight=False)
    if len(stats.problems) > SHOWN:
        console.print(f"  ... and {len(stats.problems) - SHOWN} more (all of them in --report)")


def write_report(directory: Path, all_stats: list[FileStats]) -> Path:
    """index.html with a PNG token-length histogram and role chart per file; self-contained in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    sections = []
    for number, stats in enumerate(all_stats):
        images = []
        if stats.lengths:
            figure, axis = plt.subplots(figsize=(6, 3))
            axis.hist(stats.lengths, bins=40, color="#4472c4")
            axis.set_xlabel("tokens per record")
            axis.set_ylabel("records")
            axis.set_title(Path(stats.path).name)
            figure.tight_layout()
            figure.savefig(directory / f"lengths_{number}.png", dpi=100)
            plt.close(figure)
            images.append(f"lengths_{number}.png")
        if stats.roles:
            figure, axis = plt.subplots(figsize=(6, 3))
            names, counts = zip(*stats.roles.most_common())
            axis.bar(names, counts, color="#ed7d31")
            axis.set_ylabel("messages")
            axis.set_title("roles")
            figure.tight_layout()
            figure.savefig(directory / f"roles_{number}.png", dpi=100)
            plt.close(figure)
            images.append(f"roles_{number}.png")
        rows = [
            ("format", stats.format), ("records", f"{stats.records:,}"), ("problems", f"{len(stats.problems):,}"),
            ("kinds", ", ".join(f"{k} {n:,}" for k, n in stats.kinds.most_common())),
            ("roles", ", ".join(f"{k} {n:,}" for k, n in stats.roles.most_common())),
            ("labels", ", ".join(f"{k} {n:,}" for k, n in stats.labels.most_common())),
            ("tokens per record", length_summary(stats.lengths)), ("longer than max length", f"{stats.too_long:,}"),
            ("exact duplicates", f"{stats.duplicates:,}"),
            ("PII found", ", ".join(f"{k} {n:,}" for k, n in stats.pii.most_common()) or "none"),
        ]
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows if v)
        problems = "".join(
            f"<tr><td>{html.escape(p.location)}</td><td>{html.escape(p.reason)}</td></tr>" for p in stats.problems
        )
        sections.append(
            f"<h2>{html.escape(stats.path)}</h2><table>{table}</table>"
            + "".join(f'<img src="{name}" alt="{name}">' for name in images)
            + (f"<h3>Problems</h3><table><tr><th>where</th><th>why</th></tr>{problems}</table>" if problems else "")
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tuneforge data report</title><style>"
        "body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}td{padding-right:1em}"
        "img{margin:1em 1em 0 0}</style></head><body><h1>tuneforge data report</h1>"
        + "".join(sections) + "</body></html>"
    )
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def inspect_command(args, config, console: Console) -> int:
    """The CLI's `data inspect`: flags win over the run file, which wins over defaults.
    Exits 1 when any record has a problem, so a data check can gate a pipeline."""
    from tuneforge.config import DEFAULT_MODEL
    from tuneforge.data.formats import FORMATS
    from tuneforge.errors import ConfigError
    from tuneforge.models.tokenizer import training_tokenizer

    data = config.data if config else None
    fmt = args.format or (data.format if data else "auto")
    if fmt not in ("auto", *FORMATS):
        raise ConfigError(f"--format {fmt}: expected auto or one of {', '.join(FORMATS)}")
    template = args.template or (data.template if data else "tokenizer")
    model = args.model or (config.model.name if config else DEFAULT_MODEL)
    max_len = args.max_seq_length or (config.train.max_seq_length if config else 1024)
    mapping = Mapping(data.columns, data.roles) if data else Mapping()
    tokenizer, stop_ids = training_tokenizer(model, template)
    all_stats = []
    for source in args.files:
        for path in expand(source):
            stats = inspect_file(path, fmt, mapping, tokenizer, stop_ids, max_len)
            print_stats(console, stats)
            all_stats.append(stats)
    if args.report:
        console.print(f"report: {write_report(args.report, all_stats)}")
    return 1 if any(s.problems for s in all_stats) else 0
