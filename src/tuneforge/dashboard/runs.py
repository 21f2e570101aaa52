"""Run directories as the dashboard shows them: which runs exist, each one's state, loss curve and base-vs-tuned table.

Nothing here computes a figure anew: a run's evidence is read the way `tuneforge models register`
reads it (registry/runs.py's `run_eval` and `run_gates`) and its curve the way the training loop
wrote it (train/metrics.py's `read_metrics`), so the dashboard and the CLI cannot disagree.
A run is named by its path relative to a root (the runs root, or a jobs directory), and a name
that resolves outside every root is refused (tests/dashboard/test_api.py pins it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.evaluate.compare import LOWER_IS_BETTER
from tuneforge.registry.runs import check_finished, run_eval, run_gates
from tuneforge.registry.store import RegistryError
from tuneforge.train.metrics import METRICS_FILE, read_metrics

MAX_DEPTH = 3  # runs/NAME, runs/GROUP/NAME, runs/GROUP/SUB/NAME
ACTIVE_S = 90.0  # a run whose metrics grew this recently, and that has no final model, is shown as training
CURVE_KEYS = ("train_loss", "eval_loss", "train_lr", "train_tokens_per_s", "train_epoch")


class UnknownRun(TuneforgeError):
    """A run name that names no run directory under the dashboard's roots."""


@dataclass(frozen=True)
class RunIndex:
    """The folders runs are looked for in; the first is the runs root, `tuneforge serve --runs-dir`."""

    roots: tuple[Path, ...]

    def names(self) -> list[tuple[str, Path]]:
        """(name, run directory) of every run, newest activity first."""
        found: dict[Path, str] = {}
        for root in self.roots:
            for run_dir in run_dirs(root):
                found.setdefault(run_dir.resolve(), str(run_dir.relative_to(root)))
        return sorted(((name, path) for path, name in found.items()), key=lambda pair: -last_change(pair[1]))

    def find(self, name: str) -> Path:
        """The run directory `name` names; a name with `..`, an absolute one, or one naming no run: UnknownRun."""
        given = Path(name)
        if not name or given.is_absolute() or ".." in given.parts:
            raise UnknownRun(f"{name!r} is not a run name (a path relative to the runs root, without '..')")
        for root in self.roots:
            base = root.resolve()
            candidate = (base / name).resolve()
            if candidate.is_relative_to(base) and candidate != base and is_run(candidate):
                return candidate
        raise UnknownRun(f"no run named {name!r} under {', '.join(str(r) for r in self.roots)}")


def is_run(path: Path) -> bool:
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / METRICS_FILE).is_file())


def run_dirs(root: Path, depth: int = 0) -> list[Path]:
    if depth >= MAX_DEPTH or not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if is_run(child):
            found.append(child)
        elif child.is_dir():
            found += run_dirs(child, depth + 1)
    return found


def last_change(run_dir: Path) -> float:
    times = [p.stat().st_mtime for p in (run_dir / METRICS_FILE, run_dir / "config.yaml", run_dir) if p.exists()]
    return max(times, default=0.0)


def status(run_dir: Path, now: float | None = None) -> str:
    """finished (a final model that registers), training (metrics still growing), or stopped."""
    try:
        check_finished(run_dir)
        return "finished"
    except RegistryError:
        pass
    metrics = run_dir / METRICS_FILE
    recent = metrics.is_file() and (now or time.time()) - metrics.stat().st_mtime < ACTIVE_S
    return "training" if recent else "stopped"


def run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    return document if isinstance(document, dict) else {}


def finite(value):
    """JSON has no NaN or infinity; a figure with nothing to measure is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def curve(run_dir: Path, start: int = 0) -> dict:
    """The metrics rows from index `start` on (a poller asks only for what is new), trimmed to the charted keys."""
    rows = read_metrics(run_dir)
    points = [{"step": row.get("step", 0), **{k: row[k] for k in CURVE_KEYS if k in row}} for row in rows[start:]]
    return {"next": len(rows), "points": finite(points)}


def summary(name: str, run_dir: Path) -> dict:
    """One row of the runs list: what, how far, and the latest losses."""
    config = run_config(run_dir)
    rows = read_metrics(run_dir)
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return finite({
        "name": name, "path": str(run_dir), "status": status(run_dir), "updated": last_change(run_dir),
        "model": (config.get("model") or {}).get("name"), "method": config.get("method"),
        "task": config.get("task"), "step": rows[-1].get("step", 0) if rows else 0,
        "max_steps": (config.get("train") or {}).get("max_steps"),
        "train_loss": train[-1] if train else None, "eval_loss": evals[-1] if evals else None,
    })


def table_rows(evidence: dict) -> list[dict]:
    """eval/summary.json as rows {label, base, tuned, change, better}; a probe score is [hits, asked]."""
    rows = []
    for label, row in (evidence.get("summary") or {}).items():
        if not isinstance(row, dict):
            continue
        base, tuned = row.get("base"), row.get("tuned")
        rows.append({"label": label, "base": base, "tuned": tuned, **change(label, base, tuned)})
    return rows


def change(label: str, base, tuned) -> dict:
    """The change from base to tuned, and whether it is an improvement (loss and perplexity fall when better)."""
    def value(side):
        if isinstance(side, list) and len(side) == 2 and side[1]:
            return side[0] / side[1], side[0]
        return (float(side), float(side)) if isinstance(side, int | float) else (None, None)

    (base_share, base_raw), (tuned_share, tuned_raw) = value(base), value(tuned)
    if base_share is None or tuned_share is None:
        return {"change": None, "better": None}
    delta = tuned_raw - base_raw
    lower = any(word in label.lower() for word in ("loss", "perplexity", *LOWER_IS_BETTER))
    better = None if delta == 0 else (delta < 0) == lower
    return {"change": delta, "better": better}


def detail(name: str, run_dir: Path) -> dict:
    """Everything the run page shows: the summary row, the config, the curve, the eval table, gates."""
    evidence = run_eval(run_dir)
    try:
        gates = run_gates(run_dir)
    except TuneforgeError as exc:
        gates = {"passed": False, "gates": [], "error": str(exc)}
    return finite({
        **summary(name, run_dir), "config": run_config(run_dir), "curve": curve(run_dir)["points"],
        "table": table_rows(evidence), "evaluations": evidence.get("evaluations", {}),
        "validation_loss": evidence.get("validation_loss"), "retrain": evidence.get("retrain"), "gates": gates,
    })
