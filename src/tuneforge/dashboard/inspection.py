"""`tuneforge data inspect` of an uploaded file, as JSON for the dashboard's data tab.

The upload is written to a temporary file under its own name (the format is detected from
the suffix and content, as the CLI detects it) and read by data/inspect.py's `inspect_file`
with the tokenizer of the model it is meant for, so the token lengths are the ones training
would see. Tokenizers are kept per (model, template): the first inspection loads one, later
ones reuse it.
"""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

from tuneforge.dashboard.runs import finite
from tuneforge.data.formats import Mapping
from tuneforge.data.inspect import histogram, inspect_file, length_summary
from tuneforge.errors import ConfigError

SHOWN_PROBLEMS = 200
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@functools.lru_cache(maxsize=4)
def tokenizer_for(model: str, template: str):
    from tuneforge.models.tokenizer import training_tokenizer

    return training_tokenizer(model, template)


def inspect_upload(content: bytes, filename: str, model: str | None, template: str = "tokenizer",
                   max_seq_length: int = 1024) -> dict:
    if not model:
        raise ConfigError("name the model whose tokenizer measures the records")
    if not content:
        raise ConfigError(f"{filename}: the file is empty")
    name = SAFE_NAME.sub("_", Path(filename).name) or "upload.jsonl"
    tokenizer, stop_ids = tokenizer_for(model, template)
    with tempfile.TemporaryDirectory(prefix="tuneforge-inspect-") as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        stats = inspect_file(str(path), "auto", Mapping(), tokenizer, stop_ids, max_seq_length)
    return finite({
        "file": filename, "model": model, "max_seq_length": max_seq_length, "format": stats.format,
        "records": stats.records, "problem_count": len(stats.problems),
        "kinds": dict(stats.kinds.most_common()), "roles": dict(stats.roles.most_common()),
        "turns": {str(k): n for k, n in sorted(stats.turns.items())}, "labels": dict(stats.labels.most_common()),
        "lengths": length_summary(stats.lengths), "histogram": histogram(stats.lengths, bins=12),
        "too_long": stats.too_long, "duplicates": stats.duplicates, "pii": dict(stats.pii.most_common()),
        "problems": [{"where": p.location.replace(str(path), filename), "why": p.reason}
                     for p in stats.problems[:SHOWN_PROBLEMS]],
    })
