"""Runs side by side: their stored evidence at once, and `tuneforge compare` on shared data in the background.

Two views, because they cost differently. The stored one reads what each run already holds (its
curve, its base-vs-tuned table, its `tuneforge eval` metrics, its run file) and answers at once;
the settings that differ between the runs are listed, so a reader sees why the curves part.
The evaluated one runs the CLI's `tuneforge compare` (evaluate/compare.py: the same examples,
the same decoding, one model in memory at a time) in its own process, so a long generation
neither blocks nor can crash the server, and reads back the summary.json and examples.jsonl it
saves; which examples moved most is evaluate/compare.py's `most_changed`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tuneforge.dashboard.runs import RunIndex, curve, finite, run_config, table_rows
from tuneforge.errors import ConfigError
from tuneforge.evaluate.compare import most_changed
from tuneforge.evaluate.report import direction
from tuneforge.registry.runs import run_eval

COMPARE_DIR = ".compare"  # under the runs root; hidden, so the runs list does not show it
SHOWN_EXAMPLES = 10
EXIT_FILE = "exit_code"  # written when the process ends; with no summary.json beside it, it failed


def flatten(document: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stored(index: RunIndex, names: list[str]) -> dict:
    """Curves, base-vs-tuned rows, eval metrics and differing settings of the named runs, from disk."""
    if len(names) < 2:
        raise ConfigError("pick at least two runs to compare")
    runs = [(name, index.find(name)) for name in names]
    evidence = {name: run_eval(path) for name, path in runs}
    tables = {name: {row["label"]: row for row in table_rows(evidence[name])} for name in names}
    labels = list(dict.fromkeys(label for table in tables.values() for label in table))
    rows = [{"label": label, "base": next((t[label]["base"] for t in tables.values() if label in t), None),
             "tuned": {name: tables[name].get(label, {}).get("tuned") for name in names}} for label in labels]
    metrics: dict[str, dict[str, dict]] = {}
    for name in names:
        for data_name, sides in evidence[name].get("evaluations", {}).items():
            for metric, value in sides.get("tuned", {}).items():
                metrics.setdefault(f"{data_name}: {metric}", {})[name] = value
    configs = {name: flatten(run_config(path)) for name, path in runs}
    keys = sorted({key for config in configs.values() for key in config})
    differing = [{"key": key, "values": {name: configs[name].get(key) for name in names}} for key in keys
                 if len({json.dumps(configs[name].get(key), sort_keys=True, default=str) for name in names}) > 1]
    return finite({"runs": names, "curves": {name: curve(path)["points"] for name, path in runs},
                   "table": rows, "metrics": metrics,
                   "validation_loss": {name: evidence[name].get("validation_loss") for name in names},
                   "settings": differing, "validation_data": validation_data(run_config(runs[0][1]))})


def validation_data(config: dict) -> str | None:
    """The first run's validation file: what `compare` is most often asked to evaluate on."""
    found = (config.get("data") or {}).get("validation")
    return (found[0] if isinstance(found, list) and found else found) or None


def start_evaluation(index: RunIndex, names: list[str], data: str, limit: int | None, max_new_tokens: int) -> dict:
    """Start `tuneforge compare RUN... --data DATA` in its own process; its results land in RUNS_ROOT/.compare/ID."""
    if len(names) < 2:
        raise ConfigError("pick at least two runs to compare")
    paths = [str(index.find(name)) for name in names]
    data_path = Path(data).expanduser()
    if not data_path.is_file():
        raise ConfigError(f"{data}: no such data file on the server")
    comparison_id = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1000:03d}"
    out = index.roots[0] / COMPARE_DIR / comparison_id
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "tuneforge", "compare", *paths, "--data", str(data_path), "--out", str(out),
               "--report", str(out / "report"), "--max-new-tokens", str(max_new_tokens)]
    if limit:
        command += ["--limit", str(limit)]
    (out / "request.json").write_text(json.dumps({"runs": names, "data": str(data_path), "created": time.time(),
                                                  "command": command}, indent=2))
    with (out / "log.txt").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    threading.Thread(target=record_exit, args=(process, out), daemon=True, name="compare-wait").start()
    return {"id": comparison_id, "status": "running"}


def record_exit(process: subprocess.Popen, out: Path) -> None:
    (out / EXIT_FILE).write_text(str(process.wait()))


def evaluations(index: RunIndex) -> list[dict]:
    """Every comparison started from the dashboard, newest first, with its result once `tuneforge compare` saved it."""
    folder = index.roots[0] / COMPARE_DIR
    found = sorted((p for p in folder.iterdir() if (p / "request.json").is_file()), reverse=True) if folder.is_dir() else []
    return [evaluation(path) for path in found]


def evaluation(out: Path) -> dict:
    request = json.loads((out / "request.json").read_text())
    result = {"id": out.name, "runs": request["runs"], "data": request["data"], "created": request["created"]}
    ended = (out / EXIT_FILE).is_file() or (out / "report" / "index.html").is_file()  # the report comes last
    if not ended or not (out / "summary.json").is_file():
        log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").is_file() else ""
        return {**result, "status": "failed" if ended else "running", "log": log[-2000:]}
    summary = json.loads((out / "summary.json").read_text())
    models = summary["models"]
    names = dict(zip(models, request["runs"]))  # `compare` names a model by the path it was given
    metric_names = list(dict.fromkeys(m for values in summary["metrics"].values() for m in values))
    rows = []
    for metric in metric_names:
        values = [summary["metrics"][model].get(metric) for model in models]
        first = values[0]
        rows.append({"metric": metric, "values": values,
                     "directions": [direction(metric, v - first) if isinstance(v, int | float) and
                                    isinstance(first, int | float) else "" for v in values]})
    return finite({**result, "status": "done", "models": [names.get(m, m) for m in models], "rows": rows,
                   "examples": changed_examples(out, models, metric_names[0] if metric_names else "exact_match"),
                   "report": (out / "report" / "index.html").is_file()})


def changed_examples(out: Path, models: list[str], metric: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text(encoding="utf-8").splitlines() if line]
    evals = [SimpleNamespace(scores=[row["scores"].get(model, {}) for row in rows]) for model in models]
    picked = most_changed(evals, metric, SHOWN_EXAMPLES) if len(models) > 1 else []
    return [{"prompt": (rows[i]["prompt"] or [{}])[-1].get("content", ""), "reference": rows[i]["reference"],
             "outputs": [rows[i]["outputs"].get(model, "") for model in models],
             "scores": [rows[i]["scores"].get(model, {}).get(metric, math.nan) for model in models],
             "metric": metric} for i in picked]
