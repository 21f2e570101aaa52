"""`tuneforge models register | list | show | promote | rollback` on finished tiny runs, through the CLI."""

import json
import shutil

import pytest

from tuneforge.cli import main
from tuneforge.data.dataset import sha256
from tuneforge.registry.runs import register_run
from tuneforge.registry.store import alias_history, aliases, get_version, list_versions, open_registry
from tuneforge.evaluate.run_metrics import read_metrics


def models(*args, registry):
    return main(["models", *map(str, args), "--registry", str(registry)])


def test_register_reads_the_runs_evidence(finished_run, tmp_path, tiny_model):
    run = finished_run()
    conn = open_registry(tmp_path / "registry.db")
    version = register_run(conn, run, note="first")
    assert version.id == "v1" and version.path == str(run.resolve()) and version.note == "first"
    assert version.base_model == str(tiny_model) and version.method == "lora" and version.parent is None
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert version.dataset_hashes == manifest["files"]
    assert version.dataset_hashes[str(tmp_path / "train.jsonl")] == sha256(tmp_path / "train.jsonl")
    assert version.config == (run / "config.yaml").read_text()
    losses = [row["eval_loss"] for row in read_metrics(run) if "eval_loss" in row]
    assert version.eval["validation_loss"] == losses[-1]
    assert version.eval["summary"]["validation loss"] == {"base": losses[0], "tuned": losses[-1]}
    assert version.gate is None and version.gate_outcome == "none"  # `tuneforge eval` has not checked any gates


def test_register_list_show_promote_rollback(finished_run, tmp_path, capsys, wide_terminal):
    registry = tmp_path / "registry.db"
    assert models("list", registry=registry) == 0
    assert f"no model registry at {registry}" in capsys.readouterr().out
    assert not registry.exists()  # listing never creates a registry

    first = finished_run("first")
    second = finished_run("second", **{"train.max_steps": 5})
    assert models("register", first, registry=registry) == 0
    assert models("register", second, "--parent", "v1", "--note", "more steps", registry=registry) == 0
    printed = capsys.readouterr().out
    assert f"registered v1: {first}" in printed and f"registered v2: {second}" in printed and "parent v1" in printed

    assert models("promote", "v1", "--to", "production", registry=registry) == 0
    assert models("promote", "v2", "--to", "staging", registry=registry) == 0
    assert models("promote", "staging", "--to", "production", registry=registry) == 0  # an alias names its version
    printed = capsys.readouterr().out
    assert "production: (none) -> v1" in printed and "staging: (none) -> v2" in printed
    assert "production: v1 -> v2" in printed

    assert models("list", registry=registry) == 0
    listed = capsys.readouterr().out
    assert "embedded:smollm2-135m-instruct" in listed  # the catalog is still listed first
    row = next(line for line in listed.splitlines() if "│ v2 " in line)
    assert "production, staging" in row and "v1" in row and "lora" in row and "none" in row
    conn = open_registry(registry, create=False)
    assert f"{get_version(conn, 'v2').eval['validation_loss']:.4g}" in row

    assert models("show", "production", registry=registry) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("v2 (production, staging)")
    assert f"path: {second}" in shown and "lineage: v2 <- v1 <- base" in shown and "note: more steps" in shown
    assert f"{sha256(tmp_path / 'train.jsonl')[:16]}  {tmp_path / 'train.jsonl'}" in shown
    assert "production: v1 -> v2 (promote)" in shown and "max_steps: 5" in shown  # history and config

    assert models("rollback", registry=registry) == 0
    assert "production: v2 -> v1 (rolled back)" in capsys.readouterr().out
    assert aliases(conn) == {"production": "v1", "staging": "v2"}
    assert [(e["name"], e["version"], e["action"]) for e in alias_history(conn, "production")] == [
        ("production", "v1", "promote"), ("production", "v2", "promote"), ("production", "v1", "rollback")]
    assert models("rollback", registry=registry) == 2  # v1 replaced nothing
    assert "no earlier version" in capsys.readouterr().err
    assert models("show", "v9", registry=registry) == 2
    assert "no model version 'v9'" in capsys.readouterr().err


def test_promote_refuses_a_version_whose_gates_failed_unless_forced(finished_run, tmp_path, capsys, wide_terminal):
    good = finished_run("good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    validation = str(tmp_path / "validation.jsonl")
    assert main(["eval", str(good), "--data", validation, "--max-new-tokens", "4", "--gate", "loss <= base"]) == 0
    assert main(["eval", str(bad), "--data", validation, "--max-new-tokens", "4", "--gate", "exact_match >= 0.99"]) == 3
    registry = tmp_path / "registry.db"
    assert models("register", good, "--promote", "production", registry=registry) == 0
    assert models("register", bad, registry=registry) == 0
    conn = open_registry(registry, create=False)
    assert [v.gate_outcome for v in list_versions(conn)] == ["passed", "failed"]
    assert get_version(conn, "v2").gate["data"] == "validation"
    capsys.readouterr()

    assert models("promote", "v2", "--to", "production", registry=registry) == 3
    refused = capsys.readouterr().err
    assert "v2's gates failed" in refused and "exact_match = 0.000, needs >= 0.990" in refused and "--force" in refused
    assert aliases(conn) == {"production": "v1"}
    assert models("promote", "v2", "--to", "staging", registry=registry) == 3  # staging too: the server may serve it
    assert aliases(conn) == {"production": "v1"}

    assert models("promote", "v2", "--to", "production", "--force", registry=registry) == 0
    assert "production: v1 -> v2 (forced past failed gates)" in capsys.readouterr().out
    assert aliases(conn) == {"production": "v2"}
    assert models("show", "v2", registry=registry) == 0
    shown = capsys.readouterr().out
    assert "gates: failed (validation)" in shown and "exact_match = 0.000, needs >= 0.990: FAILED" in shown


def test_register_refuses_what_is_not_a_finished_run(finished_run, tmp_path, capsys, wide_terminal):
    registry = tmp_path / "registry.db"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert models("register", empty, registry=registry) == 2
    error = capsys.readouterr().err
    assert f"{empty}: not a finished tuneforge run" in error
    assert "not a finished tuneforge run" in error
    assert "config.yaml" in error and "data_manifest.json" in error and "final/tuneforge.json" in error
    assert models("register", tmp_path / "nowhere", registry=registry) == 2
    assert "no such run directory" in capsys.readouterr().err

    run = finished_run()
    shutil.rmtree(run / "final")  # as if the run had been stopped before its end
    assert models("register", run, registry=registry) == 2
    error = capsys.readouterr().err
    assert "final/tuneforge.json (the final model)" in error and "config.yaml" not in error and "--resume" in error
    assert list_versions(open_registry(registry)) == []

    (run / "eval" / "validation").mkdir(parents=True)
    (run / "eval" / "validation" / "gates.json").write_text("{not json")
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-000003" / "model", run / "final")
    assert models("register", run, registry=registry) == 2  # a damaged gates file is not "no gates"
    assert "cannot read the gate results" in capsys.readouterr().err


@pytest.mark.parametrize("action", [["show", "production"], ["promote", "v1", "--to", "production"], ["rollback"]])
def test_actions_on_a_missing_registry_fail_without_creating_it(tmp_path, capsys, action):
    registry = tmp_path / "none.db"
    assert models(*action, registry=registry) == 2
    assert "no model registry here" in " ".join(capsys.readouterr().err.split())  # wrapped to the terminal
    assert not registry.exists()
