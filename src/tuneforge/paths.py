"""Where things are on disk: the model cache, and the saved fine-tune inside a run directory.

`TUNEFORGE_HOME` moves the cache (tests point it at a temporary directory).  The saved-model
layout sits here, below config and models, because loading a run file checks `model.init_from`
(config/schema.py) and loading a model reads it (models/load.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneforge.errors import ModelError

MODEL_INFO = "tuneforge.json"


def home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")


def models_cache() -> Path:
    return home() / "models"


def saved_model_dir(path: Path) -> Path | None:
    """The directory holding a saved fine-tune, given a run dir, a checkpoint dir, or the dir itself."""
    for candidate in (path / "final", path / "model", path):
        if (candidate / MODEL_INFO).is_file():
            return candidate
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        candidate = path / "checkpoints" / latest.read_text().strip() / "model"
        if (candidate / MODEL_INFO).is_file():
            return candidate
    return None


def saved_fine_tune(path: Path) -> tuple[Path, dict]:
    """(directory, its tuneforge.json) of the fine-tune a run dir, checkpoint or model dir holds; a run
    that starts from another's weights (model.init_from) uses it.  ModelError when there is none."""
    saved = saved_model_dir(Path(path)) if Path(path).is_dir() else None
    if saved is None:
        raise ModelError(f"{path}: no saved fine-tune here (expected a run directory, a checkpoint, or a "
                         f"directory holding {MODEL_INFO})")
    return saved, json.loads((saved / MODEL_INFO).read_text())
