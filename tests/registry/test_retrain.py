"""`tuneforge retrain` from a registered production tiny run: registration, lineage, and the promote decision."""

import json
import math

import pytest

from tests.conftest import chat_records, write_jsonl
from tuneforge.cli import main
from tuneforge.data.dataset import sha256
from tuneforge.data.replay import load_mix, replay_count
from tuneforge.registry.retrain import decide
from tuneforge.registry.store import aliases, get_version, open_registry
from tuneforge.evaluate.run_metrics import read_metrics

RETRAIN = ["--set", "train.max_steps=6"]


@pytest.fixture
def production(finished_run, tmp_path, capsys):
    """(registry, production run dir): a tiny run registered as v1 and promoted to production."""
    run = finished_run("production")
    registry = tmp_path / "registry.db"
    assert main(["models", "register", str(run), "--promote", "production", "--registry", str(registry)]) == 0
    capsys.readouterr()
    return registry, run


@pytest.fixture
def curated(tmp_path):
    """More conversations in the validation set's own pattern: training on them lowers its loss."""
    return write_jsonl(tmp_path / "curated.jsonl", chat_records(60)[30:])


def retrain(registry, *args):
    return main(["retrain", "--registry", str(registry), *map(str, args)])


def eval_losses(run_dir):
    return [row["eval_loss"] for row in read_metrics(run_dir) if "eval_loss" in row]


def test_a_retrain_that_wins_is_registered_and_promoted(production, curated, tmp_path, capsys, wide_terminal):
    registry, run = production
    out = tmp_path / "retrained"
    code = retrain(registry, "--data", curated, "--output-dir", out, "--gate", "loss <= base", *RETRAIN)
    printed = capsys.readouterr().err
    assert code == 0, printed
    conn = open_registry(registry, create=False)
    new = get_version(conn, "v2")
    assert aliases(conn) == {"production": "v2"}
    assert new.parent == "v1" and new.path == str(out) and new.gate_outcome == "passed"
    assert new.dataset_hashes[str(curated)] == sha256(curated)
    assert str(tmp_path / "validation.jsonl") in new.dataset_hashes  # production's own validation data
    assert "promoted: production v1 -> v2" in printed

    # It started from production's weights: its step-0 validation loss is production's final one, not the base's.
    production_losses = eval_losses(run)
    assert eval_losses(out)[0] == pytest.approx(production_losses[-1], rel=1e-6)
    assert not math.isclose(eval_losses(out)[0], production_losses[0], rel_tol=1e-3)

    # The replay share comes from production's original training file.
    mix = load_mix(out / "data" / "replay.jsonl")
    assert len(mix.records) == replay_count(30, 1 / 3) == 15
    assert all(r.example.source.startswith(str(tmp_path / "train.jsonl")) for r in mix.records)

    report = json.loads((out / "retrain_report.json").read_text())
    assert report["promoted"] is True and report["wins"] is True and report["reasons"] == []
    assert report["version"] == "v2" and report["alias"] == "production" and report["parent"] == "v1"
    primary = report["primary_metric"]
    assert primary["name"] == "loss" and primary["candidate"] < primary["production"]
    # The same held-out data: retrain evaluates the saved model in fp32, while training evaluated it under bf16
    # autocast where the CPU has native bf16, so the two agree to bf16's precision, not float32's.
    assert primary["production"] == pytest.approx(production_losses[-1], rel=1e-3)
    assert [g["passed"] for g in report["gates"]] == [True]
    assert new.eval["retrain"]["promoted"] is True
    assert {"base", "production", "tuned"} <= set(new.eval["evaluations"]["validation"])  # base: for `loss <= base`

    assert main(["models", "rollback", "--registry", str(registry)]) == 0
    assert aliases(conn)["production"] == "v1"


def test_a_retrain_that_fails_a_gate_stays_in_staging(production, curated, tmp_path, capsys):
    registry, _ = production
    out = tmp_path / "retrained"
    code = retrain(registry, "--data", curated, "--output-dir", out, "--gate", "exact_match >= 0.99", *RETRAIN)
    printed = " ".join(capsys.readouterr().err.split())
    assert code == 3
    conn = open_registry(registry, create=False)
    assert aliases(conn) == {"production": "v1", "staging": "v2"}
    new = get_version(conn, "v2")
    assert new.parent == "v1" and new.gate_outcome == "failed"
    report = json.loads((out / "retrain_report.json").read_text())
    assert report["promoted"] is False and report["alias"] == "staging"
    [reason] = report["reasons"]  # it did beat production on loss: the gate alone held it back
    assert reason.startswith("gates failed:") and "exact_match = 0.000, needs >= 0.990" in reason
    assert report["primary_metric"]["candidate"] < report["primary_metric"]["production"]
    assert "not promoted" in printed and "exact_match" in printed
    assert "production stays v1" in printed


def test_no_promote_registers_a_winner_as_staging(production, curated, tmp_path, capsys):
    registry, _ = production
    code = retrain(registry, "--data", curated, "--output-dir", tmp_path / "retrained", "--no-promote", *RETRAIN)
    assert code == 0
    assert aliases(open_registry(registry, create=False)) == {"production": "v1", "staging": "v2"}
    report = json.loads((tmp_path / "retrained" / "retrain_report.json").read_text())
    assert report["wins"] is True and report["promoted"] is False


def test_a_winner_against_a_version_that_is_not_production_is_not_promoted(production, curated, tmp_path, capsys):
    registry, run = production
    assert main(["models", "register", str(run), "--promote", "production", "--registry", str(registry)]) == 0
    code = retrain(registry, "--data", curated, "--from", "v1", "--output-dir", tmp_path / "retrained", *RETRAIN)
    assert code == 3
    assert aliases(open_registry(registry, create=False)) == {"production": "v2", "staging": "v3"}
    report = json.loads((tmp_path / "retrained" / "retrain_report.json").read_text())
    assert report["parent"] == "v1" and report["wins"] is True and report["promoted"] is False
    assert report["reasons"] == ["production is v2, not v1 that it was compared with; retrain from production to "
                                 "compete with it"]


def test_bad_input_is_refused_before_training(production, curated, finished_run, tmp_path, capsys, wide_terminal):
    registry, run = production

    def refused(*args) -> str:
        assert retrain(*args) == 2
        return capsys.readouterr().err

    assert "missing.jsonl: file not found" in refused(registry, "--data", tmp_path / "missing.jsonl")
    assert "no model registry here" in refused(tmp_path / "none.db", "--data", curated)
    assert "--replay-ratio 1.0" in refused(registry, "--data", curated, "--replay-ratio", "1")
    assert "no version is staging yet" in refused(registry, "--data", curated, "--from", "staging")
    assert "lerning_rate" in refused(registry, "--data", curated, "--output-dir", tmp_path / "typo",
                                     "--set", "train.lerning_rate=1")
    assert not (tmp_path / "typo").exists()
    assert "already holds a run" in refused(registry, "--data", curated, "--output-dir", run)
    assert not (run / "retrain.yaml").exists()

    split = finished_run("split", **{"data.validation": [], "data.val_split": 0.2})
    assert main(["models", "register", str(split), "--registry", str(registry)]) == 0
    assert "--validation FILE" in refused(registry, "--data", curated, "--from", "v2")
    assert aliases(open_registry(registry, create=False)) == {"production": "v1"}


def test_the_decision_weighs_gates_the_primary_metric_and_forgetting():
    production = {"loss": 2.0, "token_f1": 0.5, "perplexity_general": 10.0}
    wins = decide(production, {"loss": 1.5, "token_f1": 0.5, "perplexity_general": 10.9}, [], "eval_loss", 0.1, "v1")
    assert wins.wins and wins.primary == "loss" and wins.lower_is_better
    forgot = decide(production, {"loss": 1.5, "perplexity_general": 11.5}, [], "eval_loss", 0.1, "v1")
    [reason] = forgot.reasons
    assert reason.startswith("forgetting check against v1: perplexity on general text rose from 10.00 to 11.50")
    worse = decide(production, {"loss": 2.0, "perplexity_general": 9.0}, [], "eval_loss", 0.1, "v1")
    assert worse.reasons == ["loss 2 does not beat v1's 2 (lower is better)"]  # a tie does not win
    by_f1 = decide(production, {"loss": 1.0, "token_f1": 0.4, "perplexity_general": 9.0}, [], "token_f1", 0.1, "v1")
    assert by_f1.reasons == ["token_f1 0.4 does not beat v1's 0.5 (higher is better)"]
    unmeasured = decide(production, {"loss": 1.0, "perplexity_general": 9.0}, [], "rouge_l", 0.1, "v1")
    assert unmeasured.reasons == ["rouge_l (eval.best_metric) was not measured for both models"]
