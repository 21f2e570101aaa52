"""The classify task's data: text + label records of each split, read, checked, de-duplicated, split stratified.

The same readers, format detection, validation report and cleaning as every other task (data/),
so a bad record is named with its file and line in the same words; what differs is the output:
texts and labels, tokenized later by the classifier's own tokenizer (no chat template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from tuneforge.models.labels import Label
from tuneforge.config import DataConfig
from tuneforge.data.cleaning import normalize
from tuneforge.data.dataset import DataManifest, sha256
from tuneforge.data.formats import Problem
from tuneforge.data.prepare import SPLITS, Cleaner, records_of, source_files
from tuneforge.data.readers import HUB_PREFIX
from tuneforge.data.splits import split_rows
from tuneforge.data.validation import DataReport
from tuneforge.errors import DataError

S = TypeVar("S")  # one split's examples (Examples, or data/images.py's ImageExamples)


@dataclass
class Examples:
    texts: list[str] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # file:line of each, for messages and predictions

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> Examples:
        rows = [int(r) for r in rows]
        return Examples([self.texts[r] for r in rows], [self.labels[r] for r in rows], [self.sources[r] for r in rows])


@dataclass
class ClassifyData:
    train: Examples
    validation: Examples
    test: Examples
    manifest: DataManifest
    report: DataReport
    overlap: list[str] = field(default_factory=list)  # held-out records whose text is also a training text


def load_examples(config: DataConfig, seed: int) -> ClassifyData:
    """Every split's examples; stops (DataError) on a record that is not text + label, unless on_invalid: skip."""
    files = source_files(config)
    report = DataReport()
    cleaner = Cleaner(config, report)
    splits = {split: Examples() for split in SPLITS}
    for split, record in records_of(files, config, report):
        if record.kind != "classification":
            report.invalid.append(Problem(record.source, f"a {record.kind} record; task: classify needs "
                                          "'text' and 'label' (map other keys with data.columns)"))
            continue
        cleaned = cleaner(record, split)
        if cleaned is not None:
            examples = splits[split]
            examples.texts.append(cleaned.text)
            examples.labels.append(cleaned.label)
            examples.sources.append(cleaned.source)
    report.enforce(config.on_invalid)
    train = splits["train"]
    if not train:
        raise DataError(f"no training records left in {', '.join(files['train'])}; see the data report")
    train, validation, test = held_out_splits(train, splits["validation"], splits["test"],
                                              0.0 if files["validation"] else config.val_split,
                                              0.0 if files["test"] else config.test_split, seed)
    hashes = {f: (f if f.startswith(HUB_PREFIX) else sha256(Path(f))) for split in SPLITS for f in files[split]}
    manifest = DataManifest(
        files=hashes, formats=report.formats, train_records=len(train), validation_records=len(validation),
        test_records=len(test), invalid_records=len(report.invalid), dropped_records=len(report.dropped),
        cleaning=dict(report.counts),
    )
    return ClassifyData(train, validation, test, manifest, report, overlapping(train, [validation, test]))


def held_out_splits(train: S, validation: S, test: S, val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[S, S, S]:
    """(train, validation, test): a split given a fraction (0 where it has files of its own: data.val_split,
    data.test_split) is cut from train, seeded and stratified by label (data/splits.py).  Any labelled
    examples with `labels` and `subset(rows)` work: texts here, images in data/images.py."""
    if not (val_fraction or test_fraction):
        return train, validation, test
    cut = split_rows(np.arange(len(train)), val_fraction, test_fraction, seed, train.labels)
    return (train.subset(cut.train), train.subset(cut.validation) if val_fraction else validation,
            train.subset(cut.test) if test_fraction else test)


def overlapping(train: Examples, held_out: list[Examples]) -> list[str]:
    """Held-out records whose text (normalised) is also a training text: they flatter the held-out scores."""
    seen = {normalize(text) for text in train.texts}
    return [source for examples in held_out for text, source in zip(examples.texts, examples.sources)
            if normalize(text) in seen]
