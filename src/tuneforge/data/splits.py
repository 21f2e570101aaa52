"""Deterministic train/validation/test splits by seed and ratio, stratified by label when there are labels.

Stratifying keeps each class's share the same in every split, so a rare class is not left out
of validation by chance; the same seed gives the same split on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuneforge.errors import DataError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def held_out(count: int, fraction: float) -> int:
    return 0 if fraction <= 0 or count == 0 else max(1, round(count * fraction))


def split_rows(rows: np.ndarray, val_fraction: float, test_fraction: float, seed: int, labels=None) -> Split:
    """Cut `rows` into three; with labels (one per row), every class is cut in the same proportions."""
    rows = np.asarray(rows, dtype=np.int64)
    generator = np.random.default_rng(seed)
    if labels is None:
        groups = [rows]
    else:
        labels = np.asarray([str(label) for label in labels])
        groups = [rows[labels == value] for value in sorted(set(labels.tolist()))]
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        shuffled = group[generator.permutation(len(group))]
        n_val, n_test = held_out(len(group), val_fraction), held_out(len(group), test_fraction)
        if labels is not None and n_val + n_test >= len(group):  # a class too small to split stays in training
            n_val = n_test = 0
        parts[1].append(shuffled[:n_val])
        parts[2].append(shuffled[n_val : n_val + n_test])
        parts[0].append(shuffled[n_val + n_test :])
    train, validation, test = (np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)
    if len(rows) and not len(train):
        raise DataError(
            f"val_split={val_fraction} and test_split={test_fraction} leave no training records out of {len(rows)}"
        )
    return Split(train, validation, test)
