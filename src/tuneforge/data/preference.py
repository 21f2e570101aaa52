"""Preference pairs and rated replies, tokenized for preference training (task: preference, task: kto).

A pair is one prompt and two answers; the prompt is rendered by the chat template (data/template.py)
once per side, and the tokens the two renderings share (up to the first trained token) become the
pair's prompt, kept once: a batch puts the prompt before each answer, and the answers alone carry
labels (the prompt's own assistant turns, in a multi-turn prompt, are never trained).  A rated
reply (KTO) is a prompt and one answer with a desirable/undesirable label.

Truncation keeps the prompt whole and cuts both answers to the same budget (max_seq_length minus
the prompt), so neither side gains from being shorter in tokens; the data report counts the cut
pairs.  A prompt that leaves fewer than MIN_ANSWER tokens for the answers, answers identical after
tokenization, a record of another kind, and a KTO file whose records all carry one label are
reported with file and line, stopping the run or skipped per data.on_invalid
(tests/data/test_preference_data.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tuneforge.config import DataConfig
from tuneforge.data.formats import Problem
from tuneforge.data.prepare import SPLITS, Cleaner, source_files, source_records
from tuneforge.data.records import Message, Record
from tuneforge.data.splits import split_rows
from tuneforge.data.template import IGNORE, tokenize_records
from tuneforge.data.validation import DataReport
from tuneforge.errors import DataError

MIN_ANSWER = 4  # answer tokens a prompt must leave room for
KINDS = {"preference": "preference", "kto": "feedback"}  # task -> the record kind it trains


@dataclass(frozen=True)
class Answer:
    input_ids: list[int]  # the answer's tokens, after the prompt
    labels: list[int]  # IGNORE where not trained (template markup between turns)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class PreferenceExample:
    """A pair (answers = chosen, rejected) or a rated reply (answers = the reply; `desirable` set)."""

    prompt: list[int]
    answers: tuple[Answer, ...]
    source: str
    desirable: bool | None = None
    truncated: bool = False

    def length(self) -> int:
        return len(self.prompt) + max(len(a.input_ids) for a in self.answers)

    def tokens(self) -> int:
        return sum(len(self.prompt) + len(a.input_ids) for a in self.answers)


@dataclass
class PreferenceData:
    train: list[PreferenceExample]
    validation: list[PreferenceExample]
    test: list[PreferenceExample]
    report: DataReport
    prompts: dict[str, list[dict]] = field(default_factory=dict)  # split -> the held-out prompts as messages

    def manifest(self) -> dict:
        return {
            "train_records": len(self.train), "validation_records": len(self.validation),
            "test_records": len(self.test), "invalid_records": len(self.report.invalid),
            "dropped_records": len(self.report.dropped), "truncated_pairs": self.report.counts["truncated_pairs"],
            "train_tokens": sum(e.tokens() for e in self.train), "formats": self.report.formats,
        }

    def fingerprint(self) -> str:
        """A digest of every split's token ids: the key of log-probs cached for these examples."""
        digest = hashlib.sha256()
        for split in (self.train, self.validation):
            for example in split:
                digest.update(json.dumps([example.prompt, [a.input_ids for a in example.answers]]).encode())
        return digest.hexdigest()[:24]


def untrained_prompt(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The prompt's messages with its own assistant turns marked untrained (multi-turn prompts)."""
    return tuple(replace(m, weight=0) if m.role == "assistant" else m for m in messages)


def sides(record: Record) -> list[Record]:
    """The conversations to render: prompt + chosen and prompt + rejected, or the rated conversation."""
    if record.kind == "preference":
        prompt = untrained_prompt(record.messages)
        return [Record((*prompt, *side), record.source, "chat", tools=record.tools)
                for side in (record.chosen, record.rejected)]
    body = record.messages
    last_prompt = max(i for i, m in enumerate(body) if m.role in ("user", "tool"))
    messages = (*untrained_prompt(body[: last_prompt + 1]), *body[last_prompt + 1 :])
    return [Record(messages, record.source, "chat", tools=record.tools)]


def first_trained(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def split_prompt(record: Record, tokenized: list, max_len: int) -> PreferenceExample | str:
    """The example with its shared prompt cut out and the answers fitted to max_len, or why it cannot be."""
    ids = [t.input_ids for t in tokenized]
    shared = min(first_trained(t.labels) for t in tokenized)
    if len(ids) == 2:
        common = next((i for i, (a, b) in enumerate(zip(*ids)) if a != b), min(map(len, ids)))
        shared = min(shared, common)
        if ids[0] == ids[1]:
            return "chosen and rejected are the same tokens; nothing to prefer"
    budget = max_len - shared
    if budget < MIN_ANSWER:
        return (f"the prompt is {shared} tokens, leaving fewer than {MIN_ANSWER} for the answers within "
                f"train.max_seq_length={max_len}")
    answers = tuple(Answer(t.input_ids[shared:][:budget], t.labels[shared:][:budget]) for t in tokenized)
    if any(a.trained_tokens == 0 for a in answers):
        return "an answer has nothing to train on after applying the chat template"
    truncated = any(len(t.input_ids) > max_len for t in tokenized)
    desirable = record.label if record.kind == "feedback" else None
    return PreferenceExample(ids[0][:shared], answers, record.source, desirable, truncated)


def tokenize_preference(records: list[Record], tokenizer, stop_ids: list[int], max_len: int,
                        report: DataReport) -> list[PreferenceExample]:
    """Each record tokenized (one tokenizer call for all sides); problems go to the report."""
    rendered = [side for record in records for side in sides(record)]
    tokens = iter(tokenize_records(rendered, tokenizer, stop_ids))
    examples = []
    for record in records:
        tokenized = [next(tokens) for _ in range(2 if record.kind == "preference" else 1)]
        example = split_prompt(record, tokenized, max_len)
        if isinstance(example, str):
            report.invalid.append(Problem(record.source, example))
            continue
        report.counts["truncated_pairs"] += example.truncated
        examples.append(example)
    return examples


def read_split_records(config: DataConfig, task: str, report: DataReport) -> dict[str, list[Record]]:
    """Every valid record of the wanted kind, per split; the rest go to the report."""
    wanted = KINDS[task]
    cleaner = Cleaner(config, report)
    out: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for split, file, item in source_records(source_files(config), config, report):
        if item is None:  # the file is read
            if task == "kto":
                one_label(file, [r for r in out[split] if r.source.startswith(file)], report)
        elif item.kind != wanted:
            report.invalid.append(Problem(item.source, f"a {item.kind} record; task: {task} trains "
                                          f"{wanted} records" + (" (prompt, chosen, rejected)" if task ==
                                                                 "preference" else " (a reply with a label)")))
        elif (cleaned := cleaner(item, split)) is not None:
            out[split].append(cleaned)
    return out


def one_label(file: str, records: list[Record], report: DataReport) -> None:
    """KTO learns from the contrast of desirable and undesirable replies: a file with one label is reported."""
    labels = {r.label for r in records}
    if len(labels) == 1 and records:
        which = "desirable (true)" if labels == {True} else "undesirable (false)"
        report.invalid.append(Problem(records[0].source, f"every record of {file} is labelled {which}; KTO needs "
                                      "both labels (mix thumbs-up and thumbs-down replies)"))


def prepare_preference(config: DataConfig, task: str, tokenizer, stop_ids: list[int], max_len: int,
                       seed: int) -> PreferenceData:
    """Read, check, tokenize and split the data of a preference or KTO run, in memory."""
    report = DataReport()
    records = read_split_records(config, task, report)
    tokenized = {split: tokenize_preference(records[split], tokenizer, stop_ids, max_len, report)
                 for split in SPLITS}
    report.enforce(config.on_invalid)
    train = tokenized["train"]
    if not train:
        raise DataError(f"no training records left in {', '.join(map(str, config.train))}; see the data report")
    files = source_files(config)
    val_fraction = 0.0 if files["validation"] else config.val_split
    test_fraction = 0.0 if files["test"] else config.test_split
    validation, test = tokenized["validation"], tokenized["test"]
    if val_fraction or test_fraction:
        labels = [e.desirable for e in train] if task == "kto" else None
        split = split_rows(np.arange(len(train)), val_fraction, test_fraction, seed, labels)
        validation = validation or [train[i] for i in split.validation]
        test = test or [train[i] for i in split.test]
        train = [train[i] for i in split.train]
    held_out = {e.source for e in validation}
    prompts = {"validation": [r.as_dicts() for r in [*records["validation"], *records["train"]]
                              if r.source in held_out]}
    return PreferenceData(train, validation, test, report, prompts)


def write_report(data: PreferenceData, run_dir: Path) -> None:
    data.report.write(run_dir / "data_report.json")
    (run_dir / "data_manifest.json").write_text(json.dumps(data.manifest(), indent=2))
