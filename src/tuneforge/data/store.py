"""Tokenized examples on disk as flat arrays, read back through memory maps.

A million tokenized examples as Python lists of ints would take gigabytes; as an int32 token
array, a uint8 trained-token mask and an int64 offsets array they take 5 bytes per token, and
the training loop touches only the rows of each batch.  `TokenizedSet` is the sequence the
loop indexes: rows of the store selected by a split's indices, plus examples added in memory
(the replay mix).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tuneforge.data.template import IGNORE, TokenizedExample

TOKENS, TRAINED, OFFSETS = "tokens.int32", "trained.uint8", "offsets.npy"
ROWS_PER_BLOCK = 65_536


class StoreWriter:
    """Appends examples to the three files; `close()` writes the offsets."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.tokens = (directory / TOKENS).open("wb")
        self.trained = (directory / TRAINED).open("wb")
        self.offsets = array("q", [0])  # a C array: a million Python ints would fragment the heap

    def append(self, example: TokenizedExample) -> int:
        ids = np.asarray(example.input_ids, dtype=np.int32)
        self.tokens.write(ids.tobytes())
        self.trained.write((np.asarray(example.labels) != IGNORE).astype(np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(ids))
        return len(self.offsets) - 2

    def close(self) -> None:
        self.tokens.close()
        self.trained.close()
        np.save(self.directory / OFFSETS, np.frombuffer(self.offsets, dtype=np.int64))


class Store:
    def __init__(self, directory: Path):
        self.offsets = np.load(directory / OFFSETS)
        total = int(self.offsets[-1])
        # np.memmap refuses empty files; an empty store has no rows to read anyway.
        self.tokens = np.memmap(directory / TOKENS, dtype=np.int32, mode="r") if total else np.zeros(0, np.int32)
        self.trained = np.memmap(directory / TRAINED, dtype=np.uint8, mode="r") if total else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, row: int) -> TokenizedExample:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        ids = self.tokens[start:end]
        labels = np.where(self.trained[start:end] > 0, ids, IGNORE)
        return TokenizedExample(ids.tolist(), labels.tolist())

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.offsets[rows + 1] - self.offsets[rows]

    def trained_tokens(self, rows: np.ndarray) -> int:
        if not len(rows) or not len(self.trained):
            return 0
        # Per-row sums a block of rows at a time: reduceat casts its input to the int64 result type,
        # which for the whole store (134M tokens at 1M records) would be a 1 GB temporary.
        per_row = np.empty(len(self), dtype=np.int64)
        for start in range(0, len(self), ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, len(self))
            first, last = int(self.offsets[start]), int(self.offsets[stop])
            block = np.asarray(self.trained[first:last], dtype=np.int64)
            per_row[start:stop] = np.add.reduceat(block, self.offsets[start:stop] - first)
        return int(per_row[rows].sum())


class TokenizedSet(Sequence[TokenizedExample]):
    """The examples of one split: store rows, then in-memory extras."""

    def __init__(self, store: Store | None, rows: np.ndarray, extra: Sequence[TokenizedExample] = ()):
        self.store, self.rows, self.extra = store, np.asarray(rows, dtype=np.int64), list(extra)

    @classmethod
    def of(cls, examples: Sequence[TokenizedExample]) -> TokenizedSet:
        return cls(None, np.zeros(0, dtype=np.int64), examples)

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, index: int) -> TokenizedExample:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < len(self.rows):
            return self.store.example(int(self.rows[index]))  # type: ignore[union-attr]
        return self.extra[index - len(self.rows)]

    def __iter__(self) -> Iterator[TokenizedExample]:
        return (self[i] for i in range(len(self)))

    def with_extra(self, extra: Sequence[TokenizedExample]) -> TokenizedSet:
        return TokenizedSet(self.store, self.rows, [*self.extra, *extra])

    def lengths(self) -> list[int]:
        stored = self.store.lengths(self.rows).tolist() if self.store is not None else []
        return stored + [len(e.input_ids) for e in self.extra]

    def replay_flags(self) -> list[bool]:
        return [False] * len(self.rows) + [e.replay for e in self.extra]

    def tokens(self) -> int:
        return sum(self.lengths())

    def trained_tokens(self) -> int:
        stored = self.store.trained_tokens(self.rows) if self.store is not None else 0
        return stored + sum(e.trained_tokens for e in self.extra)
