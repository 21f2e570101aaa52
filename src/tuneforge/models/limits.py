"""A model's own sequence limit (its position embeddings), read from config.json without loading weights.

A `train.max_seq_length` beyond what the model was built for is refused before any data is read:
otherwise records far longer than the model can attend to pass validation and the run stalls or
produces garbage (a 14,513-token record with max_seq_length 1e9 on an 8,192-position model hung with no
output).  Pinned by tests/models/test_limits.py and tests/train/test_reliability.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import ConfigError

LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def position_limit(model_dir: Path) -> int | None:
    """The number of positions the model's config.json declares, or None when it declares none."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):  # multimodal configs nest the language model's
        for key in LIMIT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_max_seq_length(model_name: str, max_seq_length: int, key: str = "train.max_seq_length") -> None:
    """ConfigError naming `key` and the model's limit when `max_seq_length` exceeds it."""
    from tuneforge.models.resolve import resolve

    limit = position_limit(resolve(model_name))
    if limit is not None and max_seq_length > limit:
        raise ConfigError(
            f"{key} is {max_seq_length:,}, but the model {model_name} takes at most {limit:,} tokens "
            f"(max_position_embeddings in its config.json); set {key} to {limit} or less"
        )
