"""The label set of a classifier: class names in a fixed order, single- or multi-label, targets and weights.

The order is what the head's outputs mean, so it is saved with the model (config.json's id2label
and tuneforge.json) and never re-derived from data at prediction time.  Labels that are all
integers sort as numbers ("2" before "10"); others sort as text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from tuneforge.errors import DataError

Label = str | tuple[str, ...]  # a record's label: one class, or (multi-label) the classes that apply


def label_order(name: str) -> tuple[int, int, str]:
    return (0, int(name), name) if name.lstrip("-").isdigit() else (1, 0, name)


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]
    multi_label: bool

    @staticmethod
    def from_data(labels: Iterable[Label], multi_label: bool | None = None,
                  given: Sequence[str] | None = None) -> LabelSet:
        """The label set of the training labels; `multi_label` None means: multi-label when labels are lists."""
        labels = list(labels)
        lists = any(isinstance(label, tuple) for label in labels)
        multi = lists if multi_label is None else multi_label
        if lists and not multi:
            raise DataError("the training labels are lists (multi-label data) but classify.multi_label is false; "
                            "set it to true, or give each record one label")
        seen = {name for label in labels for name in as_names(label)}
        names = tuple(given) if given else tuple(sorted(seen, key=label_order))
        if len(names) < (1 if multi else 2):
            raise DataError(f"a classifier needs at least {1 if multi else 2} classes; the training data has "
                            f"{len(names)}: {', '.join(names) or 'none'}")
        return LabelSet(names, multi)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    def check(self, label: Label, source: str) -> None:
        """DataError naming the record when its label is not in the set (or is a list in a single-label set)."""
        if isinstance(label, tuple) and not self.multi_label:
            raise DataError(f"{source}: a list of labels, but this classifier is single-label")
        unknown = [name for name in as_names(label) if name not in self.label2id]
        if unknown:
            raise DataError(f"{source}: label {unknown[0]!r} is not one of the classifier's labels: "
                            f"{', '.join(self.names)}")

    def target(self, label: Label) -> int | list[float]:
        """The class index (single-label) or the multi-hot vector (multi-label) of a record's label."""
        if not self.multi_label:
            return self.label2id[label]
        hot = [0.0] * len(self.names)
        for name in as_names(label):
            hot[self.label2id[name]] = 1.0
        return hot

    def targets(self, labels: Sequence[Label]) -> torch.Tensor:
        values = [self.target(label) for label in labels]
        return torch.tensor(values, dtype=torch.float32 if self.multi_label else torch.long)

    def balanced_weights(self, labels: Sequence[Label]) -> torch.Tensor:
        """sklearn's "balanced" weights, records / (classes x records of the class); for multi-label, the
        positive weight negatives / positives of each class (BCE's pos_weight).  A class absent from the
        training data gets weight 1."""
        counts = Counter(name for label in labels for name in as_names(label))
        total, k = len(labels), len(self.names)
        if self.multi_label:
            weights = [(total - counts[n]) / counts[n] if counts[n] else 1.0 for n in self.names]
        else:
            weights = [total / (k * counts[n]) if counts[n] else 1.0 for n in self.names]
        return torch.tensor(weights, dtype=torch.float32)

    def decode(self, probabilities: torch.Tensor, threshold: float) -> list[Label]:
        """Predicted labels of a [n, classes] probability matrix: the argmax, or every class at the threshold."""
        if not self.multi_label:
            return [self.names[i] for i in probabilities.argmax(dim=-1).tolist()]
        return [tuple(self.names[i] for i, on in enumerate(row) if on) for row in (probabilities >= threshold).tolist()]


def as_names(label: Label) -> tuple[str, ...]:
    return label if isinstance(label, tuple) else (label,)
