"""`tuneforge monitor report` and `monitor drift` over the request log, as JSON for the dashboard's monitoring tab.

The log is read exactly as the CLI reads it (monitor/commands.py's `read_log` and
`training_sources`, read-only, so beside the live server), and the figures are the CLI's:
monitor/report.py's `build_report` (its `rows` give the table's text) and monitor/drift.py's
`check_drift`. Drift compares production prompts with a run's training data; the surprise
signal, which needs a model loaded, is left to the CLI.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tuneforge.dashboard.runs import finite
from tuneforge.errors import ConfigError
from tuneforge.monitor import drift
from tuneforge.monitor.commands import read_log, training_sources
from tuneforge.monitor.report import build_report, rows, shown


def window(log_db: Path | None, since: str | None, until: str | None = None) -> SimpleNamespace:
    if log_db is None:
        raise ConfigError("this server keeps no request log (it was started with --no-log)")
    return SimpleNamespace(db=Path(log_db), since=since or None, until=until or None)


def report(log_db: Path | None, since: str | None = None, until: str | None = None) -> dict:
    """The monitor report: per-version table (the CLI's text), and per-bucket series for the charts."""
    args = window(log_db, since, until)
    if not args.db.is_file():
        return {"db": str(args.db), "requests": 0, "note": f"{args.db}: nothing logged yet"}
    requests, feedback, start, end = read_log(args)
    built = build_report(requests, feedback, start, end)
    columns = shown(built)
    return finite({"db": str(args.db), "requests": len(requests), **built.as_dict(),
                   "columns": [s.name for s in columns], "rows": rows(columns)})


def drift_check(log_db: Path | None, run_dir: Path | None, data: str | None, since: str | None = None) -> dict:
    """Production prompts against the training data of `run_dir` (its config.yaml), or of the data file `data`."""
    args = window(log_db, since)
    args.data, args.config = ([data] if data else []), run_dir
    sources, fmt, mapping = training_sources(args)
    requests, _, _, _ = read_log(args)
    production = drift.production_prompts(requests)
    if not production:
        return {"db": str(args.db), "note": "no prompts logged in this window; nothing to compare", "signals": []}
    train = drift.training_prompts(sources, fmt, mapping)
    if len(train) < drift.MIN_TRAINING_PROMPTS:
        raise ConfigError(f"{', '.join(map(str, sources))}: {len(train)} training prompts; the drift check needs "
                          f"at least {drift.MIN_TRAINING_PROMPTS}")
    result = drift.check_drift(train, production)
    return finite({"db": str(args.db), "training_data": [str(s) for s in sources], **result.as_dict()})
