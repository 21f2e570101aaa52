"""Where the dashboard looks: the runs root, the model registry, the request log, and the model whose tokenizer reads data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUNS_ROOT = Path("runs")


@dataclass(frozen=True)
class DashboardSettings:
    """`tuneforge serve` fills these from --runs-dir, --registry, --log-db and MODEL_OR_RUN (serve/commands.py)."""

    runs_root: Path = DEFAULT_RUNS_ROOT
    registry: Path | None = None  # None: registry/store.registry_path()'s default ($TUNEFORGE_REGISTRY, ./...)
    log_db: Path | None = None  # None: the server keeps no request log (--no-log)
    model: str | None = None  # the served base model: its tokenizer measures an inspected file's token lengths
