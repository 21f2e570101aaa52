"""Scores of a model's answers against references: generation metrics and a classification report.

Exact match, contains and token F1 compare answers after the SQuAD normalisation
(`normalize_answer`), so "The Eiffel Tower." and "eiffel tower" agree: a fine-tune is judged on
what it answers, not on its capitals or full stop.  ROUGE-L and BLEU keep the words' order and
punctuation (ROUGE-L only ignores case), as the literature computes them.  Empty strings follow
one rule everywhere: both empty is a perfect answer (1.0), one empty is a miss (0.0).

BLEU is sacrebleu's, not a re-implementation, so its numbers are the ones papers report.  Its
per-example score is sentence BLEU (smoothed), but the summary is corpus BLEU: the mean of
sentence BLEUs over-punishes short answers, and corpus BLEU is what "the BLEU of a model" means.
sacrebleu is imported only when BLEU is asked for, so the other metrics need nothing installed.

A custom metric is named in the config as `module:function`; the function takes
(prediction, reference) and returns a float, and its summary is the mean over examples.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tuneforge.config.metric_names import custom_metric  # the names a run file may use live in config
from tuneforge.errors import ConfigError

ARTICLES = frozenset({"a", "an", "the"})
OTHER = "(other)"  # confusion-matrix column of predictions that match no label


# --- normalisation ---------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """NFKC, casefold, drop punctuation (any Unicode P* category), drop a/an/the, single spaces.

    NFKC first so that full-width letters and composed/decomposed accents compare equal;
    casefold rather than lower so that "STRASSE" equals "straße".  Accents are kept:
    "café" and "cafe" are different words.  Punctuation is deleted, not replaced by a space,
    as in SQuAD ("don't" -> "dont").
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(word for word in text.split() if word not in ARTICLES)


# --- per-example scorers: (prediction, reference) -> [0, 1] ----------------------------------

def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised prediction as whole words.

    Whole words, so that the reference "cat" is not found in "concatenate"; an empty
    reference is 0.0, since finding nothing proves nothing.
    """
    wanted = normalize_answer(reference).split()
    if not wanted:
        return 0.0
    words = normalize_answer(prediction).split()
    width = len(wanted)
    return float(any(words[i:i + width] == wanted for i in range(len(words) - width + 1)))


def _f_measure(overlap: int, predicted: int, expected: int) -> float:
    """Harmonic mean of overlap/predicted and overlap/expected, with the empty-string rule."""
    if predicted == 0 and expected == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of normalised words: partial credit for a partly right answer."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    return _f_measure(overlap, len(predicted), len(expected))


def _lcs_length(first: list[str], second: list[str]) -> int:
    """Longest common subsequence by dynamic programming, one row at a time (memory O(len(second)))."""
    previous = [0] * (len(second) + 1)
    for word in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over whitespace words of the casefolded texts: rewards word order."""
    predicted, expected = prediction.casefold().split(), reference.casefold().split()
    return _f_measure(_lcs_length(predicted, expected), len(predicted), len(expected))


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F-measure over clipped n-gram counts of the casefolded whitespace words (graders' rouge_1..rouge_5)."""
    def grams(text: str) -> Counter:
        words = text.casefold().split()
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    predicted, expected = grams(prediction), grams(reference)
    overlap = sum((predicted & expected).values())
    return _f_measure(overlap, sum(predicted.values()), sum(expected.values()))


def fuzzy_match(prediction: str, reference: str) -> float:
    """Similarity ratio in [0, 1] of the two strings: 2 x matched characters / total length (difflib, junk
    heuristic off). OpenAI's fuzzy_match uses rapidfuzz's fuzz.ratio, the same formula over the longest common
    subsequence; difflib's matching blocks can find fewer matches, so scores may be a little lower."""
    import difflib

    if not prediction and not reference:
        return 1.0
    return difflib.SequenceMatcher(None, prediction, reference, autojunk=False).ratio()


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError("the metric 'bleu' needs sacrebleu: pip install sacrebleu") from None
    return sacrebleu


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu's defaults, exponential smoothing) scaled to [0, 1]."""
    if not prediction.strip() or not reference.strip():
        return float(not prediction.strip() and not reference.strip())
    return _sacrebleu().sentence_bleu(prediction, [reference]).score / 100


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults) scaled to [0, 1]: n-gram counts pooled over all examples.

    Unlike sentence BLEU it keeps order 4, so a set of answers all under four words scores 0
    even when every answer is right; use exact match or token F1 for short answers.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("corpus BLEU of no examples")
    if not any(p.strip() for p in predictions) and not any(r.strip() for r in references):
        return 1.0  # all empty: every answer was right, as per example
    return _sacrebleu().corpus_bleu(list(predictions), [list(references)]).score / 100


# --- metrics by name ------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[str, str], float]
    higher_is_better: bool = True


GENERATION_METRICS: tuple[Metric, ...] = (
    Metric("exact_match", exact_match),
    Metric("contains", contains),
    Metric("token_f1", token_f1),
    Metric("rouge_l", rouge_l),
    Metric("bleu", bleu),
)
BUILTIN_NAMES = tuple(metric.name for metric in GENERATION_METRICS)


def generation_metric(name: str) -> Metric:
    """A built-in metric by name, or the custom `module:function` (named by its function;
    config/metric_names.py resolves it and says what is wrong with a bad name)."""
    for metric in GENERATION_METRICS:
        if metric.name == name:
            return metric
    function_name, function = custom_metric(name)
    return Metric(function_name, function)


def summarize(metric_name: str, per_example: list[float], predictions: list[str], references: list[str]) -> float:
    """The metric over a whole set: the mean of per-example scores, except BLEU, which is corpus BLEU."""
    if not per_example:
        raise ValueError(f"no scores to summarise for {metric_name!r}")
    if metric_name == "bleu":
        return corpus_bleu(predictions, references)
    return math.fsum(per_example) / len(per_example)


# --- classification ------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassificationReport:
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    labels: list[str]
    confusion: list[list[int]]  # rows = reference label, columns = predicted label, then OTHER

    def as_dict(self) -> dict:
        return {**asdict(self), "columns": [*self.labels, OTHER]}


def _label_index(labels: list[str]) -> dict[str, int]:
    """Normalised label -> its position; two labels that normalise alike could not be told apart."""
    index: dict[str, int] = {}
    for position, label in enumerate(labels):
        key = normalize_answer(label)
        if key in index:
            raise ValueError(f"labels {labels[index[key]]!r} and {label!r} are the same after normalisation")
        index[key] = position
    return index


def classification_report(predictions: list[str], references: list[str],
                          labels: list[str] | None = None) -> ClassificationReport:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.

    A prediction counts as a label when it equals it after `normalize_answer` ("Positive." is
    "positive"); one that matches no label is wrong, goes to the OTHER column, and is a false
    negative of its reference class.  A class never predicted has precision 0 (not undefined),
    so a model that ignores a class is not flattered.  Macro averages are over the labels that
    occur among the references; labels passed in but never a reference are reported with
    support 0 and left out of the averages.  Without `labels`, the labels are the distinct
    references, sorted.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("a classification report needs at least one example")
    if labels is None:
        first_spelling = {}
        for reference in references:
            first_spelling.setdefault(normalize_answer(reference), reference)
        labels = sorted(first_spelling.values())
    labels = list(labels)
    index = _label_index(labels)
    confusion = [[0] * (len(labels) + 1) for _ in labels]
    for prediction, reference in zip(predictions, references):
        row = index.get(normalize_answer(reference))
        if row is None:
            raise ValueError(f"reference {reference!r} is not one of the labels {labels}")
        confusion[row][index.get(normalize_answer(prediction), len(labels))] += 1

    per_class: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        correct, support = confusion[i][i], sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision = correct / predicted if predicted else 0.0
        recall = correct / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}

    present = [per_class[label] for label in labels if per_class[label]["support"]]
    return ClassificationReport(
        accuracy=sum(confusion[i][i] for i in range(len(labels))) / len(references),
        macro_precision=math.fsum(c["precision"] for c in present) / len(present),
        macro_recall=math.fsum(c["recall"] for c in present) / len(present),
        macro_f1=math.fsum(c["f1"] for c in present) / len(present),
        per_class=per_class,
        labels=labels,
        confusion=confusion,
    )
