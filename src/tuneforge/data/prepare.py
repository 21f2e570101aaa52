"""From the config's data section to tokenized splits: read, validate, clean, tokenize, split, cache.

Everything streams: records are read, checked, cleaned and tokenized in chunks and appended to
an on-disk store (data/store.py), so preparing a million records needs memory for one chunk
plus a 16-byte digest per record.  The result is cached under TUNEFORGE_HOME/datasets/KEY,
where KEY hashes the input files' contents, the tokenizer, and every setting that changes the
output; a second `prepare` with the same inputs loads it in milliseconds.  A build writes into
a temporary folder renamed into place at the end, so a failed or interrupted build leaves no
half-written cache behind.
"""

from __future__ import annotations

import hashlib
from array import array
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tuneforge.config import DataConfig
from tuneforge.data import cleaning
from tuneforge.data.dataset import DataManifest, sha256
from tuneforge.data.formats import Mapping, Problem, SourceReader
from tuneforge.data.packing import split_blocks
from tuneforge.data.readers import HUB_PREFIX, expand
from tuneforge.data.records import Message, Record
from tuneforge.data.splits import split_rows
from tuneforge.data.store import Store, StoreWriter, TokenizedSet
from tuneforge.data.template import tokenize_records, unpadded
from tuneforge.data.validation import DataReport
from tuneforge.errors import DataError
from tuneforge.paths import home

FORMAT_VERSION = 1  # bump when the store's layout or the rendering changes
CHUNK = 512
TRAINABLE = ("chat", "text", "classification")
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    train: TokenizedSet
    validation: TokenizedSet
    test: TokenizedSet
    manifest: DataManifest
    directory: Path | None = None  # the cache entry; None for data built in memory
    from_cache: bool = False  # loaded from an earlier prepare with the same inputs


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        with unpadded(backend):  # a padding state left by an earlier batched call is not the tokenizer's identity
            described = backend.to_str()
    else:
        described = repr(sorted(tokenizer.get_vocab().items()))
    digest.update(described.encode())
    digest.update(f"{tokenizer.chat_template}|{tokenizer.bos_token}|{tokenizer.eos_token}".encode())
    return digest.hexdigest()


def cache_key(config: DataConfig, files: dict[str, str], tokenizer, stop_ids: list[int], max_len: int, seed: int) -> str:
    settings = config.model_dump(mode="json", exclude={"replay", "train", "validation", "test", "packing"})
    payload = {
        "version": FORMAT_VERSION, "files": files, "settings": settings, "max_len": max_len, "seed": seed,
        "sources": [config.train, config.validation, config.test], "stop_ids": stop_ids,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def source_files(config: DataConfig) -> dict[str, list[str]]:
    return {split: [f for source in getattr(config, split) for f in expand(source)] for split in SPLITS}


def prepare(config: DataConfig, tokenizer, stop_ids: list[int], max_len: int, seed: int) -> PreparedData:
    """The prepared dataset for this config and tokenizer: from the cache, or built (and cached)."""
    files = source_files(config)
    hashes = {f: (f if f.startswith(HUB_PREFIX) else sha256(Path(f))) for split in SPLITS for f in files[split]}
    key = cache_key(config, hashes, tokenizer, stop_ids, max_len, seed)
    directory = home() / "datasets" / key
    hub = any(f.startswith(HUB_PREFIX) for f in hashes)
    if (directory / "manifest.json").is_file() and not hub:
        return load(directory, from_cache=True)
    tmp = directory.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(config, files, hashes, tokenizer, stop_ids, max_len, seed, tmp)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.replace(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load(directory)


def load(directory: Path, from_cache: bool = False) -> PreparedData:
    store = Store(directory / "store")
    manifest = DataManifest(**json.loads((directory / "manifest.json").read_text()))
    sets = [TokenizedSet(store, np.load(directory / f"{split}.npy")) for split in SPLITS]
    return PreparedData(*sets, manifest=manifest, directory=directory, from_cache=from_cache)


class Cleaner:
    """The per-record cleaning steps the config switches on, with their counts in the report."""

    def __init__(self, config: DataConfig, report: DataReport):
        self.clean, self.report = config.clean, report
        self.exact = {split: cleaning.ExactDuplicates() for split in SPLITS}
        settings = cleaning.NearDuplicateSettings(threshold=config.clean.near_dedup_threshold)
        self.near = {split: cleaning.NearDuplicates(settings) for split in SPLITS} if config.clean.near_dedup else None

    def __call__(self, record: Record, split: str) -> Record | None:
        if self.clean.redact_pii:
            record = self.redact(record)
        text = record.full_text()
        if self.clean.dedup and not self.exact[split].first_seen(text):
            return self.drop(record, "exact duplicate of an earlier record", "exact_duplicates")
        if self.near is not None:
            earlier = self.near[split].check(record.source, text)
            if earlier is not None:
                return self.drop(record, f"near duplicate of {earlier}", "near_duplicates")
        return record

    def drop(self, record: Record, reason: str, counter: str) -> None:
        self.report.dropped.append(Problem(record.source, reason))
        self.report.counts[counter] += 1
        return None

    def redact(self, record: Record) -> Record:
        def clean(text: str) -> str:
            redacted, counts = cleaning.redact_pii(text)
            for kind, n in counts.items():
                self.report.counts[f"pii_{kind}"] += n
            return redacted

        def clean_messages(messages: tuple[Message, ...]) -> tuple[Message, ...]:
            return tuple(replace(m, content=clean(m.content)) for m in messages)

        return replace(
            record, messages=clean_messages(record.messages), chosen=clean_messages(record.chosen),
            rejected=clean_messages(record.rejected), text=clean(record.text),
        )


def source_records(files: dict[str, list[str]], config: DataConfig,
                   report: DataReport) -> Iterator[tuple[str, str, Record | None]]:
    """(split, file, record) for every record the files hold, split by split; unreadable ones go to the report,
    and each file's format once it is read, announced by a last (split, file, None)."""
    mapping = Mapping(config.columns, config.roles)
    for split in SPLITS:
        for file in files[split]:
            reader = SourceReader(file, config.format, mapping)
            for item in reader:
                if isinstance(item, Problem):
                    report.invalid.append(item)
                else:
                    yield split, file, item
            report.formats[file] = reader.format or "unknown"
            yield split, file, None


def records_of(files: dict[str, list[str]], config: DataConfig, report: DataReport) -> Iterator[tuple[str, Record]]:
    """(split, record) for every valid record of a kind SFT trains; invalid ones go to the report."""
    for split, file, item in source_records(files, config, report):
        if item is None:
            continue
        if item.kind not in TRAINABLE:
            raise DataError(
                f"{item.source}: a {item.kind} record; training uses chat, text and classification records "
                f"(`tuneforge data inspect {file}` checks {item.kind} data)"
            )
        yield split, item


def build(config, files, hashes, tokenizer, stop_ids, max_len, seed, directory: Path) -> None:
    report = DataReport()
    cleaner = Cleaner(config, report)
    writer = StoreWriter(directory / "store")
    rows: dict[str, array] = {split: array("q") for split in SPLITS}
    labels: list[object] = []
    prompts_path = directory / "prompts.jsonl"
    with prompts_path.open("w", encoding="utf-8") as prompts:

        def flush(chunk: list[tuple[str, Record]]) -> None:
            for (split, record), tokens in zip(chunk, tokenize_records([r for _, r in chunk], tokenizer, stop_ids)):
                length = len(tokens.input_ids)
                if length > max_len and config.split_long_texts and record.kind == "text":
                    for number, block in enumerate(split_blocks(tokens, max_len), start=1):
                        if len(block.input_ids) > 1:  # a one-token tail predicts nothing
                            rows[split].append(writer.append(block))
                            labels.append(None)
                            # the block's own text: blocks of one document must not look like copies of each other
                            source = f"{record.source}#block{number}"
                            text = tokenizer.decode(block.input_ids, skip_special_tokens=True)
                            prompts.write(json.dumps([source, text], ensure_ascii=False) + "\n")
                elif length > max_len:
                    report.invalid.append(Problem(
                        record.source, f"{length} tokens, longer than train.max_seq_length={max_len}"))
                elif tokens.trained_tokens == 0:
                    report.invalid.append(Problem(record.source, "nothing to train on after applying the chat template"))
                elif config.clean.min_tokens and length < config.clean.min_tokens:
                    cleaner.drop(record, f"{length} tokens, shorter than clean.min_tokens={config.clean.min_tokens}", "too_short")
                elif config.clean.max_tokens and length > config.clean.max_tokens:
                    cleaner.drop(record, f"{length} tokens, longer than clean.max_tokens={config.clean.max_tokens}", "too_long")
                else:
                    rows[split].append(writer.append(tokens))
                    labels.append(record.label)
                    prompts.write(json.dumps([record.source, record.prompt_text()], ensure_ascii=False) + "\n")

        chunk: list[tuple[str, Record]] = []
        for split, record in records_of(files, config, report):
            cleaned = cleaner(record, split)
            if cleaned is not None:
                chunk.append((split, cleaned))
            if len(chunk) >= CHUNK:
                flush(chunk)
                chunk = []
        flush(chunk)
    writer.close()
    report.enforce(config.on_invalid)
    if not rows["train"]:
        raise DataError(f"no training records left in {', '.join(files['train'])}; see the data report")

    train, validation, test = (np.frombuffer(rows[split], dtype=np.int64).copy() for split in SPLITS)
    val_fraction = 0.0 if files["validation"] else config.val_split
    test_fraction = 0.0 if files["test"] else config.test_split
    if val_fraction or test_fraction:
        labelled = all(labels[row] is not None for row in train)  # classification data: stratify by label
        train_labels = [labels[row] for row in train] if labelled else None
        split = split_rows(train, val_fraction, test_fraction, seed, train_labels)
        train = split.train
        validation = validation if files["validation"] else split.validation
        test = test if files["test"] else split.test
    if config.clean.contamination != "off" and (len(validation) or len(test)):
        train = check_contamination(prompts_path, train, np.concatenate([validation, test]), config, report)
    prompts_path.unlink()

    store = Store(directory / "store")
    for name, split_rows_ in (("train", train), ("validation", validation), ("test", test)):
        np.save(directory / f"{name}.npy", split_rows_)
    manifest = DataManifest(
        files=hashes, formats=report.formats, train_records=len(train), validation_records=len(validation),
        test_records=len(test), train_tokens=int(store.lengths(train).sum()), trained_tokens=store.trained_tokens(train),
        invalid_records=len(report.invalid), dropped_records=len(report.dropped), cleaning=dict(report.counts),
    )
    report.write(directory / "report.json")
    (directory / "manifest.json").write_text(json.dumps(manifest.as_dict(), indent=2))


def check_contamination(prompts_path: Path, train: np.ndarray, held_out: np.ndarray, config: DataConfig, report) -> np.ndarray:
    """Report training prompts that overlap validation/test prompts; remove them from training if asked."""
    index = cleaning.ContaminationIndex(n=config.clean.contamination_ngram)
    evaluated, trained = set(held_out.tolist()), set(train.tolist())
    with prompts_path.open(encoding="utf-8") as prompts:
        for row, line in enumerate(prompts):
            if row in evaluated:
                location, prompt = json.loads(line)
                index.add_eval(location, prompt)
    contaminated: set[int] = set()
    with prompts_path.open(encoding="utf-8") as prompts:
        for row, line in enumerate(prompts):
            if row not in trained:
                continue
            location, prompt = json.loads(line)
            for overlap in index.check_train(location, prompt):
                report.overlaps.append({"eval": overlap.eval_key, "train": overlap.train_key, "shared": round(overlap.shared, 3)})
                contaminated.add(row)
                if config.clean.contamination == "remove":
                    report.dropped.append(Problem(location, f"its prompt overlaps held-out prompt {overlap.eval_key}"))
    report.counts["contaminated_train_records"] = len(contaminated)
    if config.clean.contamination == "remove" and contaminated:
        return np.asarray([row for row in train.tolist() if row not in contaminated], dtype=np.int64)
    return train


def describe(prepared: PreparedData) -> str:
    """What `data prepare` prints: counts, what was dropped, and where the prepared data lives."""
    m = prepared.manifest
    cleaning = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(m.cleaning.items()) if v) or "nothing"
    formats = ", ".join(f"{Path(f).name}: {kind}" for f, kind in m.formats.items())
    return "\n".join([
        f"{'cached' if prepared.from_cache else 'prepared'}: {prepared.directory}",
        f"formats: {formats}",
        f"records: {m.train_records:,} train / {m.validation_records:,} validation / {m.test_records:,} test; "
        f"{m.train_tokens:,} training tokens ({m.trained_tokens:,} trained)",
        f"skipped {m.invalid_records:,} invalid and dropped {m.dropped_records:,} records (cleaning: {cleaning}); "
        f"details in {prepared.directory / 'report.json'}",
    ])
