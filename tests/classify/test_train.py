"""Training classifiers: tiny random BERT (full) and Llama (LoRA body, full head) learn; labels survive save/load."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.classify.conftest import keyword_records, write_config
from tests.conftest import write_jsonl
from tuneforge.models.labels import LabelSet
from tuneforge.models.classifier import build_for_training, load_classifier
from tuneforge.train.driver import train as train_classifier
from tuneforge.config import load_config
from tuneforge.evaluate.run_metrics import read_metrics

QUIET = Console(quiet=True)


def losses(run_dir, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run_dir) if key in r]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def saved_scores(run_dir) -> list[dict[str, float]]:
    return [json.loads(line)["scores"] for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]


def test_encoder_full_fine_tune_learns_and_saves_its_label_mapping(trained_bert):
    run = trained_bert.run_dir
    train = losses(run, "train_loss")
    # The best five-step stretch, not the last: at a constant 3e-3 a tiny random BERT's last steps can spike.
    assert min(mean(train[i : i + 5]) for i in range(len(train) - 4)) < 0.6 * mean(train[:5])
    evals = losses(run, "eval_loss")
    assert min(evals[1:]) < evals[0]
    assert trained_bert.outcome.split == "test"
    assert trained_bert.outcome.tuned["accuracy"] > trained_bert.outcome.base["accuracy"]

    final = run / "final"
    info = json.loads((final / "tuneforge.json").read_text())
    assert info["task"] == "classify" and info["method"] == "full" and info["multi_label"] is False
    assert info["labels"] == ["fruit", "tool", "weather"]
    config = json.loads((final / "config.json").read_text())
    assert config["id2label"] == {"0": "fruit", "1": "tool", "2": "weather"}
    assert config["label2id"] == {"fruit": 0, "tool": 1, "weather": 2}

    # Loaded back from its files, the classifier gives the probabilities the trained model gave in memory.
    classifier = load_classifier(str(run))
    texts = [json.loads(line)["text"] for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    loaded = classifier.classify(texts)
    for prediction, scores in zip(loaded, saved_scores(run)):
        assert prediction.scores.keys() == scores.keys()
        assert max(abs(prediction.scores[k] - scores[k]) for k in scores) < 1e-5
        assert prediction.label == max(scores, key=scores.get)
    assert (run / "eval" / "confusion_tuned.png").stat().st_size > 0
    assert (run / "eval" / "confusion_base.png").stat().st_size > 0


def test_decoder_lora_trains_the_adapter_and_the_whole_head(tiny_model, classify_config, one_thread):
    config = load_config(classify_config(tiny_model, method="lora", **{"train.learning_rate": 5e-3}))
    model, _, _ = build_for_training(config, LabelSet(("fruit", "tool", "weather"), False), None)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {name for name in trainable if ".score." in name}
    assert head and all("modules_to_save" in name for name in head)
    assert trainable - head and all("lora_" in name for name in trainable - head)
    assert not any(name.endswith("score.original_module.weight") for name in trainable)

    result = train_classifier(config, console=QUIET)
    train = losses(result.run_dir, "train_loss")
    assert mean(train[-5:]) < 0.5 * mean(train[:5])
    evals = losses(result.run_dir, "eval_loss")
    assert min(evals[1:]) < evals[0]
    assert result.outcome.tuned["accuracy"] > result.outcome.base["accuracy"]

    final = result.run_dir / "final"
    assert (final / "adapter_config.json").is_file()
    assert json.loads((final / "config.json").read_text())["id2label"] == {"0": "fruit", "1": "tool", "2": "weather"}
    classifier = load_classifier(str(final))
    # The frozen body is the base model's, bit for bit; the head has left its random start.
    base = load_file(tiny_model / "model.safetensors")
    body = classifier.model.get_base_model().model
    for name, tensor in body.state_dict().items():
        if "lora_" not in name and f"model.{name}" in base:
            torch.testing.assert_close(tensor, base[f"model.{name}"], rtol=0, atol=0)
    texts = [json.loads(line)["text"] for line in (result.run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    for prediction, scores in zip(classifier.classify(texts), saved_scores(result.run_dir)):
        assert max(abs(prediction.scores[k] - scores[k]) for k in scores) < 1e-5


def test_multi_label_uses_sigmoid_and_the_threshold(tiny_bert, classify_config, one_thread):
    result = train_classifier(load_config(classify_config(tiny_bert, multi=True)), console=QUIET)
    info = json.loads((result.run_dir / "final" / "tuneforge.json").read_text())
    assert info["multi_label"] is True and info["threshold"] == 0.5
    assert "micro_f1" in result.outcome.tuned and result.outcome.tuned["multi_label"] is True
    train = losses(result.run_dir, "train_loss")
    assert mean(train[-5:]) < mean(train[:5])
    row = json.loads((result.run_dir / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    assert isinstance(row["labels"], list) and isinstance(row["reference"], list)

    classifier = load_classifier(str(result.run_dir))
    texts = ["apple drill rain", "banana", "storm fog"]
    for threshold in (0.05, 0.5, 0.95):
        for prediction in classifier.classify(texts, threshold=threshold):
            assert list(prediction.label) == [k for k, p in prediction.scores.items() if p >= threshold]
    from tuneforge.serve.protocol import ClassifyResult

    answer = ClassifyResult(index=0, **classifier.classify(texts)[0].as_dict()).model_dump(exclude_none=True)
    assert set(answer) == {"index", "labels", "scores"}
    low, high = classifier.classify(texts, threshold=0.01), classifier.classify(texts, threshold=0.99)
    assert all(len(a.label) >= len(b.label) for a, b in zip(low, high))
    assert any(sum(p.scores.values()) > 1.01 or sum(p.scores.values()) < 0.99 for p in low)  # not a softmax


def test_resume_reproduces_the_uninterrupted_run(tiny_bert, tmp_path, one_thread):
    settings = {"train.max_steps": 14, "checkpoint.every_steps": 4}
    whole = train_classifier(load_config(write_config(tmp_path / "whole", tiny_bert, **settings)), console=QUIET)
    parts = load_config(write_config(tmp_path / "parts", tiny_bert, **settings))
    stopped = train_classifier(parts, console=QUIET, stop=lambda state: state.step == 6)
    assert stopped.interrupted_by == "stop" and stopped.state.step == 6
    resumed = train_classifier(parts, resume=True, console=QUIET)
    assert resumed.state.step == 14
    assert losses(resumed.run_dir, "train_loss") == pytest.approx(losses(whole.run_dir, "train_loss"), abs=1e-6)
    assert resumed.outcome.tuned["accuracy"] == whole.outcome.tuned["accuracy"] and resumed.outcome.base == whole.outcome.base


def test_balanced_class_weights_follow_the_counts():
    labels = LabelSet(("a", "b", "c"), False)
    weights = labels.balanced_weights(["a"] * 6 + ["b"] * 3 + ["c"] * 1)
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    multi = LabelSet(("a", "b"), True)
    assert multi.balanced_weights([("a",), ("a", "b"), ("a",), ()]).tolist() == pytest.approx([1 / 3, 3.0])


def test_balanced_weights_train_on_imbalanced_data(tiny_bert, tmp_path, one_thread):
    records = [r for r in keyword_records(60, seed=3) if r["label"] != "weather" or int(r["text"].split()[0]) < 12]
    train = write_jsonl(tmp_path / "imbalanced.jsonl", records)
    config = load_config(write_config(tmp_path, tiny_bert, **{"data.train": str(train),
                                                              "classify.class_weights": "balanced"}))
    console = Console(record=True, width=200, file=io.StringIO())
    result = train_classifier(config, console=console)
    assert "class weights (balanced): fruit 0." in console.export_text()
    assert result.outcome.tuned is not None
