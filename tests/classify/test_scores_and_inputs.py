"""Scores agree with the evaluation module; labels, data and config problems are refused with their place named."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from tests.classify.conftest import keyword_records, write_config
from tests.conftest import write_jsonl
from tuneforge.data.classification import load_examples
from tuneforge.models.labels import LabelSet
from tuneforge.evaluate.classification import multi_label_report, score
from tuneforge.train.driver import train as train_classifier
from tuneforge.config import load_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluate.metrics import classification_report


def test_single_label_scores_are_the_evaluation_modules():
    labels = LabelSet(("billing", "refund", "shipping"), False)
    references = ["billing", "refund", "shipping", "refund", "billing", "shipping", "shipping"]
    predicted = ["billing", "shipping", "shipping", "refund", "refund", "shipping", "billing"]
    ours = score(predicted, references, labels)
    theirs = classification_report(predicted, references, list(labels.names)).as_dict()
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "labels"):
        assert ours[key] == theirs[key]
    assert all(row[-1] == 0 for row in theirs["confusion"])  # the column of answers that are no label
    assert ours["confusion"] == [row[:-1] for row in theirs["confusion"]] == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert ours["columns"] == list(labels.names)
    assert ours["accuracy"] == pytest.approx(4 / 7)


def test_class_names_that_normalise_alike_are_still_told_apart():
    labels = LabelSet(("A", "a"), False)
    report = score(["A", "a", "a"], ["A", "a", "A"], labels)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"]["A"]["recall"] == 0.5 and report["per_class"]["a"]["precision"] == 0.5
    assert report["labels"] == report["columns"] == ["A", "a"]


def test_multi_label_report_by_hand():
    names = ("x", "y", "z")
    references = [("x",), ("x", "y"), (), ("z",)]
    predicted = [("x",), ("x",), ("y",), ("z",)]
    report = multi_label_report(predicted, references, names)
    assert report["accuracy"] == pytest.approx(2 / 4)  # every class right: records 1 and 4
    assert report["per_class"]["x"]["f1"] == 1.0
    assert report["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert report["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1


def test_label_set_order_targets_and_decoding():
    labels = LabelSet.from_data(["10", "2", "1", "2"])
    assert labels.names == ("1", "2", "10") and not labels.multi_label
    assert labels.targets(["2", "10"]).tolist() == [1, 2]
    multi = LabelSet.from_data([("b",), ("a", "b"), "c"])
    assert multi.multi_label and multi.names == ("a", "b", "c")
    assert multi.target(("a", "c")) == [1.0, 0.0, 1.0]
    assert multi.decode(torch.tensor([[0.9, 0.5, 0.49]]), 0.5) == [("a", "b")]
    assert LabelSet.from_data(["x", "y"], given=["y", "x"]).names == ("y", "x")
    with pytest.raises(DataError, match="at least 2 classes"):
        LabelSet.from_data(["only"])
    with pytest.raises(DataError, match="multi_label is false"):
        LabelSet.from_data([("a", "b"), "a"], multi_label=False)


def test_a_held_out_label_unknown_to_training_names_its_line(tiny_bert, tmp_path):
    path = write_config(tmp_path, tiny_bert)
    test = tmp_path / "test.jsonl"
    test.write_text(test.read_text() + '{"text": "a new kind of thing", "label": "furniture"}\n')
    with pytest.raises(DataError, match=rf"{test}:16: label 'furniture' is not one of the classifier's labels: "
                                        "fruit, tool, weather"):
        train_classifier(load_config(path), console=Console(quiet=True))
    assert not (tmp_path / "run" / "final").exists()


def test_records_without_a_label_are_listed_or_skipped(tmp_path):
    records = keyword_records(20, seed=1)
    records[3] = {"text": "no label here"}
    records[7] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    train = write_jsonl(tmp_path / "mixed.jsonl", records)
    config = load_config(write_config(tmp_path, tmp_path, **{"data.train": str(train)}))
    with pytest.raises(DataError) as error:
        load_examples(config.data, 0)
    assert f"{train}:4: 'label' must be a class name (string or number), got None" in str(error.value)
    assert f"{train}:8: 'text' is missing or empty" in str(error.value)
    config = load_config(write_config(tmp_path, tmp_path, **{"data.train": str(train), "data.on_invalid": "skip"}))
    data = load_examples(config.data, 0)
    assert len(data.train) + len(data.validation) == 18 and len(data.report.invalid) == 2
    unlabelled = write_jsonl(tmp_path / "texts.jsonl", [{"text": "just a text"}, {"text": "another"}])
    with pytest.raises(DataError, match=f"{unlabelled}:1: a text record; task: classify needs 'text' and 'label'"):
        load_examples(load_config(write_config(tmp_path, tmp_path, **{"data.train": str(unlabelled)})).data, 0)


def test_list_labels_are_read_as_multi_label_records(tmp_path):
    from tuneforge.data.formats import read_records

    path = tmp_path / "multi.csv"
    path.write_text('text,label\nlate and broken,"[""shipping"", ""damage""]"\nfine,[urgent]\nnone apply,[]\n')
    records = read_records(path)
    assert [r.label for r in records] == [("damage", "shipping"), "[urgent]", ()]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"task": "chat", "classify.threshold": 0.3}, r"classify: applies to task: classify"),
    ({"data.packing": True}, r"data\.packing: is not supported with task: classify"),
    ({"eval.best_metric": "token_f1"}, r"eval\.best_metric: must be one of eval_loss, accuracy, macro_f1"),
    ({"classify.labels": ["a", "a"]}, r"classify\.labels: labels must be distinct"),
    ({"classify.class_weights": "inverse"}, r"classify\.class_weights: Input should be 'none' or 'balanced'"),
    ({"classify.threshold": 1.5}, r"classify\.threshold: Input should be less than 1"),
])
def test_config_problems_name_the_key(tmp_path, overrides, message):
    path = write_config(tmp_path, tmp_path, **overrides)
    with pytest.raises(ConfigError, match=rf"classify\.yaml(:\d+)?: {message}"):
        load_config(path)


def test_a_chat_run_file_still_round_trips_with_the_new_sections(run_config, tmp_path):
    from tuneforge.config import dump_config

    config = load_config(run_config())
    assert config.task == "chat"
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config))
    assert load_config(dumped) == config
