"""Register a finished run directory as a model version: read its evidence, never recompute it.

Everything a version records is already in the run directory: the resolved run file
(config.yaml), the sha256 of every data file (data_manifest.json, plus the replay records the
run trained on, data/replay.jsonl), the base model and method (final/tuneforge.json), the
final table (eval/summary.json), the final validation loss (metrics.jsonl), the results of
`tuneforge eval` or `tuneforge retrain` (eval/DATA_NAME/*/metrics.json) and their gates
(eval/DATA_NAME/gates.json).  A directory that lacks any of the first three is not a finished
run, and registering it is refused with what is missing, so a version always points at a model
that loads.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tuneforge.data.dataset import sha256
from tuneforge.data.replay import RUN_FILE as REPLAY_FILE
from tuneforge.evaluate.gates import read_gates
from tuneforge.models.load import MODEL_INFO
from tuneforge.registry.retrain import REPORT as RETRAIN_REPORT
from tuneforge.registry.store import RegistryError, Version, add_version
from tuneforge.evaluate.run_metrics import read_metrics


def register_run(conn: sqlite3.Connection, run_dir: Path, parent: str | None = None, note: str | None = None) -> Version:
    """Add the finished run in `run_dir` to the registry; RegistryError naming what is missing otherwise."""
    run_dir = Path(run_dir).resolve()
    check_finished(run_dir)
    info = json.loads((run_dir / "final" / MODEL_INFO).read_text())
    manifest = read_json(run_dir / "data_manifest.json")
    hashes = dict(manifest.get("files", {}))
    replay = run_dir / REPLAY_FILE
    if replay.is_file():
        hashes[str(replay)] = sha256(replay)
    return add_version(
        conn, run_dir, info["base_model"], info["method"], parent=parent, dataset_hashes=hashes,
        config=(run_dir / "config.yaml").read_text(encoding="utf-8"), eval=run_eval(run_dir),
        gate=run_gates(run_dir), note=note,
    )


def check_finished(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RegistryError(f"{run_dir}: no such run directory")
    wanted = {"config.yaml": "the resolved run file", "data_manifest.json": "the data manifest",
              f"final/{MODEL_INFO}": "the final model"}
    missing = [f"{name} ({what})" for name, what in wanted.items() if not (run_dir / name).is_file()]
    if missing:
        hint = (" (the run did not finish: continue it with `tuneforge train RUN.yaml --resume`)"
                if (run_dir / "checkpoints").is_dir() else "")
        raise RegistryError(f"{run_dir}: not a finished tuneforge run; missing {', '.join(missing)}{hint}")


def read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(document, dict):
        raise RegistryError(f"{path}: expected a JSON object")
    return document


def run_eval(run_dir: Path) -> dict:
    """The run's evaluation evidence: {validation_loss, summary, evaluations: {data: {side: metrics}}, retrain}."""
    evidence: dict = {}
    losses = [row["eval_loss"] for row in read_metrics(run_dir) if "eval_loss" in row]
    if losses:
        evidence["validation_loss"] = losses[-1]
    eval_dir = run_dir / "eval"
    if (eval_dir / "summary.json").is_file():
        evidence["summary"] = read_json(eval_dir / "summary.json")
    evaluations = {}
    for metrics in sorted(eval_dir.glob("*/*/metrics.json")):
        data_name, side = metrics.parent.parent.name, metrics.parent.name
        evaluations.setdefault(data_name, {})[side] = read_json(metrics).get("metrics", {})
    if evaluations:
        evidence["evaluations"] = evaluations
    if (run_dir / RETRAIN_REPORT).is_file():
        evidence["retrain"] = read_json(run_dir / RETRAIN_REPORT)
    return evidence


def run_gates(run_dir: Path) -> dict | None:
    """The gate results of the run's evaluation ({passed, gates, data}), None when no gates were checked.

    With several evaluations, the most recent gates.json counts (each `tuneforge eval` writes its own).
    """
    found = sorted((run_dir / "eval").glob("*/gates.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        return None
    document = read_gates(found[-1])  # a damaged file is an error (TuneforgeError), never "no gates"
    return {**document, "data": found[-1].parent.name}

