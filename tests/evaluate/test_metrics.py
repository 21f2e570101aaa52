"""Each metric against values worked out by hand on small fixed inputs (the working is in comments)."""

from __future__ import annotations

import json
import math

import pytest
import sacrebleu

from tuneforge.errors import ConfigError
from tuneforge.evaluate.metrics import (
    GENERATION_METRICS,
    OTHER,
    bleu,
    classification_report,
    contains,
    corpus_bleu,
    exact_match,
    generation_metric,
    normalize_answer,
    rouge_l,
    summarize,
    token_f1,
)

approx = pytest.approx


# --- normalisation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("The  Eiffel Tower!", "eiffel tower"),      # article, case, punctuation, double space
    ("An apple, a day.", "apple day"),
    ("theater Anna", "theater anna"),             # articles only as whole words
    ("don't", "dont"),                            # punctuation deleted, not made a space
    ("x-ray", "xray"),                            # dash (Pd)
    ("¿Qué?", "qué"),                             # inverted question mark (Po); accent kept
    ("«Bonjour»", "bonjour"),                     # guillemets (Pi, Pf)
    ("ＣＡＦＥ", "cafe"),                          # full-width letters -> ASCII by NFKC
    ("STRASSE straße", "strasse strasse"),        # casefold, not lower
    ("东京。", "东京"),                            # ideographic full stop (Po)
    ("$5 + 3 👍", "$5 + 3 👍"),                   # symbols (Sc, Sm, So) are not punctuation
    ("The", ""),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# --- exact match ---------------------------------------------------------------------------

@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("Paris", "paris.", 1.0),
    ("The Paris", "paris", 1.0),
    ("Paris, France", "paris", 0.0),
    ("Café", "cafe", 0.0),              # accents matter
    ("CAFÉ", "café", 1.0),              # casefold keeps the accent
    ("cafe\u0301", "café", 1.0),        # decomposed é composes under NFKC
    ("STRASSE", "straße", 1.0),
    ("东京。", "东京", 1.0),
    ("👍!", "👍", 1.0),
    ("👍", "👎", 0.0),
    ("", "", 1.0),
    ("", "paris", 0.0),
    ("paris", "", 0.0),
    ("the", "", 1.0),                   # both normalise to ""
])
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


# --- contains ------------------------------------------------------------------------------

@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("The capital is Paris.", "paris", 1.0),
    ("I live in New York City", "new york", 1.0),
    ("york new", "new york", 0.0),      # the words in order, together
    ("new big york", "new york", 0.0),
    ("concatenate", "cat", 0.0),        # whole words only
    ("我爱 东京 !", "东京", 1.0),
    ("Ça coûte 5 €", "COÛTE", 1.0),
    ("", "paris", 0.0),
    ("paris", "", 0.0),                 # an empty reference is never "found"
    ("paris", "The.", 0.0),             # normalises to empty
    ("", "", 0.0),
])
def test_contains(prediction, reference, expected):
    assert contains(prediction, reference) == expected


# --- token F1 ------------------------------------------------------------------------------

@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    # [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3, F1 = 2 * 2/3 / (5/3) = 0.8
    ("the cat sat", "a cat sat down", 0.8),
    # [cat, cat, cat] vs [cat]: overlap min(3, 1) = 1, P = 1/3, R = 1, F1 = (2/3) / (4/3) = 0.5
    ("cat cat cat", "cat", 0.5),
    # [café, au, lait] vs [cafe, au, lait]: overlap 2, P = R = 2/3, F1 = 2/3
    ("Café au lait", "cafe au lait!", 2 / 3),
    ("Sat, cat.", "cat sat", 1.0),      # a bag: order does not count
    ("dog", "cat", 0.0),
    ("", "", 1.0),
    ("the", "an", 1.0),                 # both empty after normalisation
    ("", "cat", 0.0),
    ("cat", "", 0.0),
])
def test_token_f1(prediction, reference, expected):
    assert token_f1(prediction, reference) == approx(expected)


# --- ROUGE-L -------------------------------------------------------------------------------

@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    # LCS "the cat was under the bed" = 6; P = 6/7, R = 6/6, F = 2 * 6/7 / (13/7) = 12/13
    ("the cat was found under the bed", "the cat was under the bed", 12 / 13),
    # Lin (2004)'s example: LCS "police the gunman" = 3 of 4 and 4 -> P = R = F = 3/4
    ("police kill the gunman", "police killed the gunman", 0.75),
    # LCS "the gunman" = 2 of 4 and 4 -> 1/2
    ("the gunman kill police", "police killed the gunman", 0.5),
    # reversed: LCS 1 of 4 and 4 -> 1/4
    ("a b c d", "d c b a", 0.25),
    ("The Cat", "the cat", 1.0),        # case is ignored
    ("ÉCOLE Straße", "école STRASSE", 1.0),
    ("cat.", "cat", 0.0),               # punctuation is not
    ("東京 大阪", "大阪 東京", 0.5),     # LCS 1 of 2 and 2
    ("", "", 1.0),
    ("  ", "", 1.0),
    ("", "cat", 0.0),
    ("cat", "", 0.0),
])
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == approx(expected)


# --- BLEU ----------------------------------------------------------------------------------

def test_bleu_identical_is_one_and_disjoint_is_zero():
    sentence = "the quick brown fox jumps over the lazy dog"
    assert bleu(sentence, sentence) == approx(1.0)
    assert bleu("alpha beta gamma delta", "one two three four") == 0.0


def test_bleu_brevity_penalty_by_hand():
    # Every 1- to 4-gram of the 6-word prediction is in the 7-word reference, so each precision
    # is 1 and BLEU is the brevity penalty alone: exp(1 - 7/6) = exp(-1/6).
    assert bleu("the cat sat on the mat", "the cat sat on the mat today") == approx(math.exp(-1 / 6))


def test_bleu_is_sacrebleu_sentence_bleu_scaled():
    prediction, reference = "the cat is on the mat", "there is a cat on the mat"
    expected = sacrebleu.sentence_bleu(prediction, [reference]).score / 100
    assert 0.0 < expected < 1.0
    assert bleu(prediction, reference) == approx(expected)


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("", "", 1.0), (" ", "", 1.0), ("", "the cat", 0.0), ("the cat", "", 0.0),
])
def test_bleu_empty(prediction, reference, expected):
    assert bleu(prediction, reference) == expected


def test_bleu_unicode():
    assert bleu("Ça coûte cinq euros 👍", "Ça coûte cinq euros 👍") == approx(1.0)


PREDICTIONS = ["the cat is on the mat", "a dog barked loudly at night"]
REFERENCES = ["there is a cat on the mat", "the dog barked at night"]


def test_corpus_bleu_is_sacrebleu_corpus_bleu_scaled():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100
    assert 0.0 < expected < 1.0
    assert corpus_bleu(PREDICTIONS, REFERENCES) == approx(expected)


def test_corpus_bleu_edges():
    assert corpus_bleu(["the same four words"], ["the same four words"]) == approx(1.0)
    # corpus BLEU does not shorten its n-gram order: with no 4-gram anywhere it is 0, even when right
    assert corpus_bleu(["three same words"], ["three same words"]) == 0.0
    assert corpus_bleu(["", ""], ["", ""]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_bleu(PREDICTIONS, REFERENCES[:1])
    with pytest.raises(ValueError, match="no examples"):
        corpus_bleu([], [])


# --- summaries -----------------------------------------------------------------------------

def test_summarize_is_the_mean():
    assert summarize("token_f1", [1.0, 0.5, 0.0], ["a", "b", "c"], ["a", "b", "c"]) == approx(0.5)
    assert summarize("keyword_hit", [0.25, 0.75], ["a", "b"], ["a", "b"]) == approx(0.5)


def test_summarize_bleu_is_corpus_bleu_not_the_mean():
    # the per-example list is ignored: corpus BLEU pools n-gram counts over the predictions
    value = summarize("bleu", [0.0, 0.0], PREDICTIONS, REFERENCES)
    assert value == approx(corpus_bleu(PREDICTIONS, REFERENCES))
    assert value > 0.0


def test_summarize_nothing_is_an_error():
    with pytest.raises(ValueError, match="token_f1"):
        summarize("token_f1", [], [], [])


# --- metrics by name -----------------------------------------------------------------------

def test_builtin_metrics_by_name():
    names = [metric.name for metric in GENERATION_METRICS]
    assert names == ["exact_match", "contains", "token_f1", "rouge_l", "bleu"]
    scorers = [exact_match, contains, token_f1, rouge_l, bleu]
    for name, scorer in zip(names, scorers):
        metric = generation_metric(name)
        assert metric.name == name and metric.score is scorer and metric.higher_is_better


def test_custom_metric_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "tf_custom_metrics.py").write_text(
        "def keyword_hit(prediction, reference):\n"
        "    return float(reference.lower() in prediction.lower())\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    metric = generation_metric("tf_custom_metrics:keyword_hit")
    assert metric.name == "keyword_hit"
    assert metric.score("It is PARIS", "paris") == 1.0
    assert metric.score("It is Rome", "paris") == 0.0


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(tmp_path)


@pytest.mark.parametrize("spec", ["blue", "f1", ""])
def test_unknown_name_lists_the_builtins(spec):
    with pytest.raises(ConfigError) as error:
        generation_metric(spec)
    message = str(error.value)
    assert repr(spec) in message
    for name in ("exact_match", "contains", "token_f1", "rouge_l", "bleu", "module:function"):
        assert name in message


@pytest.mark.parametrize("spec", [":keyword_hit", "tf_custom_metrics:", ":"])
def test_half_a_spec(spec):
    with pytest.raises(ConfigError, match="module:function") as error:
        generation_metric(spec)
    assert repr(spec) in str(error.value)


def test_missing_module():
    with pytest.raises(ConfigError, match="cannot import module 'tf_no_such_module'") as error:
        generation_metric("tf_no_such_module:score")
    assert "'tf_no_such_module:score'" in str(error.value)


def test_missing_function(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "tf_metrics_nofunc", "def other(p, r):\n    return 0.0\n")
    with pytest.raises(ConfigError, match="has no function 'score'") as error:
        generation_metric("tf_metrics_nofunc:score")
    assert "'tf_metrics_nofunc:score'" in str(error.value)


def test_not_callable(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "tf_metrics_value", "threshold = 0.5\n")
    with pytest.raises(ConfigError, match="not callable") as error:
        generation_metric("tf_metrics_value:threshold")
    assert "'tf_metrics_value:threshold'" in str(error.value)


@pytest.mark.parametrize("function", ["bleu", "accuracy"])
def test_custom_metric_may_not_take_a_reported_name(tmp_path, monkeypatch, function):
    # a custom "bleu" would be summarised as corpus BLEU; "accuracy" would overwrite the classifier's
    write_module(tmp_path, monkeypatch, f"tf_metrics_{function}", f"def {function}(p, r):\n    return 1.0\n")
    with pytest.raises(ConfigError, match="is taken"):
        generation_metric(f"tf_metrics_{function}:{function}")


# --- classification ------------------------------------------------------------------------

def three_class_report():
    references = ["positive", "positive", "positive", "negative", "negative", "neutral", "neutral", "neutral"]
    predictions = ["Positive.", "positive", "negative",          # 2 right, 1 called negative
                   "negative", "I think negative",               # 1 right, 1 matches no label
                   "neutral", "positive", "The neutral"]          # 2 right ("the" dropped), 1 called positive
    return classification_report(predictions, references)


def test_classification_three_classes_by_hand():
    report = three_class_report()
    assert report.labels == ["negative", "neutral", "positive"]  # sorted references
    # rows = reference, columns = negative, neutral, positive, (other)
    assert report.confusion == [
        [1, 0, 0, 1],
        [0, 2, 1, 0],
        [1, 0, 2, 0],
    ]
    assert report.accuracy == approx(5 / 8)
    # negative: tp 1, predicted 2 (column), support 2 -> P 1/2, R 1/2, F1 1/2
    # neutral:  tp 2, predicted 2, support 3 -> P 1, R 2/3, F1 2 * 2/3 / (5/3) = 4/5
    # positive: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
    expected = {
        "negative": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
        "neutral": {"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3},
        "positive": {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3},
    }
    assert report.per_class == {label: approx(values) for label, values in expected.items()}
    assert report.macro_precision == approx((1 / 2 + 1 + 2 / 3) / 3)  # 13/18
    assert report.macro_recall == approx((1 / 2 + 2 / 3 + 2 / 3) / 3)  # 11/18
    assert report.macro_f1 == approx(59 / 90)                         # (15 + 24 + 20) / 30 / 3


def test_classification_as_dict_is_json():
    data = json.loads(json.dumps(three_class_report().as_dict()))
    assert data["columns"] == ["negative", "neutral", "positive", OTHER]
    assert data["confusion"][0] == [1, 0, 0, 1]
    assert data["accuracy"] == approx(0.625)
    assert data["macro_f1"] == approx(59 / 90)
    assert data["per_class"]["neutral"]["support"] == 3


def test_class_never_predicted_has_precision_zero():
    # yes: tp 1, predicted 2, support 1 -> P 1/2, R 1, F1 2/3; no: never predicted -> P 0, R 0, F1 0
    report = classification_report(["yes", "yes"], ["yes", "no"])
    assert report.labels == ["no", "yes"]
    assert report.per_class["no"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report.per_class["yes"] == approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert report.macro_f1 == approx(1 / 3)
    assert report.confusion == [[0, 1, 0], [0, 1, 0]]


def test_given_labels_not_among_references_are_reported_but_not_averaged():
    # yes: P 1, R 1; no: never predicted, P 0, R 0; maybe: predicted once wrongly, support 0
    report = classification_report(["yes", "Maybe"], ["yes", "no"], labels=["yes", "no", "maybe"])
    assert report.confusion == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert report.per_class["maybe"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report.accuracy == 0.5
    assert (report.macro_precision, report.macro_recall, report.macro_f1) == approx((0.5, 0.5, 0.5))


def test_unicode_labels_and_reference_spellings():
    # references that normalise alike are one label, spelled as first seen
    report = classification_report(["PEUT-ÊTRE !", "non", "😀"], ["Peut-être", "peut-être", "non"])
    assert report.labels == ["Peut-être", "non"]
    # "PEUT-ÊTRE !" -> "peutêtre" is right; "non" for peut-être is wrong; the emoji matches no label
    assert report.confusion == [[1, 1, 0], [0, 0, 1]]
    assert report.accuracy == approx(1 / 3)


def test_classification_bad_input():
    with pytest.raises(ValueError, match="at least one example"):
        classification_report([], [])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        classification_report(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="'maybe' is not one of the labels"):
        classification_report(["yes", "no"], ["yes", "maybe"], labels=["yes", "no"])
    with pytest.raises(ValueError, match="same after normalisation"):
        classification_report(["yes"], ["yes"], labels=["Yes", "yes."])
