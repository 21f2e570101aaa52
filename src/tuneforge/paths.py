"""Where tuneforge keeps state that outlives a run: the model cache.

`TUNEFORGE_HOME` moves it (tests point it at a temporary directory).
"""

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")


def models_cache() -> Path:
    return home() / "models"
