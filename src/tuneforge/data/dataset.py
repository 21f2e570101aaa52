"""From the config's data section to tokenized train and validation sets, plus a manifest.

The manifest (file hashes, record counts, what was truncated) is written into the run
directory, so a run can always say exactly what it was trained on.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.formats import read_examples
from tuneforge.data.records import ChatExample
from tuneforge.data.template import IGNORE, TokenizedExample, tokenize_example
from tuneforge.errors import DataError


@dataclass
class DataManifest:
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    train_records: int = 0
    validation_records: int = 0
    train_tokens: int = 0
    trained_tokens: int = 0
    truncated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    manifest: DataManifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_all(paths: list[Path], fmt) -> list[ChatExample]:
    return [example for path in paths for example in read_examples(path, fmt)]


def split(examples: list[ChatExample], fraction: float, seed: int) -> tuple[list[ChatExample], list[ChatExample]]:
    if fraction <= 0:
        return examples, []
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * fraction))
    if n_val >= len(shuffled):
        raise DataError(f"val_split={fraction} leaves no training records out of {len(shuffled)}")
    return shuffled[n_val:], shuffled[:n_val]


def prepare(config: DataConfig, tokenizer, stop_ids: list[int], max_len: int, seed: int) -> PreparedData:
    manifest = DataManifest(files={str(p): sha256(p) for p in [*config.train, *config.validation]})
    train = read_all(config.train, config.format)
    if config.validation:
        validation = read_all(config.validation, config.format)
    else:
        train, validation = split(train, config.val_split, seed)

    def encode(examples: list[ChatExample]) -> list[TokenizedExample]:
        encoded = []
        for example in examples:
            tokens = tokenize_example(example, tokenizer, stop_ids)
            if len(tokens.input_ids) > max_len:
                tokens = TokenizedExample(tokens.input_ids[:max_len], tokens.labels[:max_len])
                manifest.truncated.append(example.source)
            if tokens.trained_tokens == 0:
                raise DataError(
                    f"{example.source}: nothing left to train on after truncating to max_seq_length={max_len} tokens; "
                    "raise train.max_seq_length or shorten the record"
                )
            encoded.append(tokens)
        return encoded

    prepared = PreparedData(encode(train), encode(validation), manifest)
    manifest.train_records, manifest.validation_records = len(prepared.train), len(prepared.validation)
    manifest.train_tokens = sum(len(t.input_ids) for t in prepared.train)
    manifest.trained_tokens = sum(t.trained_tokens for t in prepared.train)
    return prepared


def label_count(labels) -> int:
    """Tokens that carry loss after the one-position shift of causal LM training."""
    return int((labels[:, 1:] != IGNORE).sum())
