"""Continued pretraining (`task: pretrain`): plain text only, and perplexity on held-out text as its measure.

The training itself is the chat method's (train/methods/language_model.py): a text record is trained on every token (data/template.py),
long documents are cut into blocks and packed (data/prepare.py, data/packing.py). What differs is
what a run reports: held-out perplexity, exp(mean token loss), before and after, since a domain
corpus has no replies to score.
"""

from __future__ import annotations

import math

from tuneforge.data.dataset import DataManifest
from tuneforge.errors import DataError


def require_text(manifest: DataManifest) -> None:
    """Refuse chat, preference or labelled files: pretraining on them would silently train on markup."""
    for path, kind in manifest.formats.items():
        if kind != "text":
            raise DataError(f"{path}: {kind} records; task: pretrain trains on plain text (.txt files, or JSONL "
                            'records {"text": ...}); use task: chat for conversations')


def perplexity(loss: float | None) -> float | None:
    """exp(mean token loss); None when there was no held-out loss, inf when it overflows."""
    if loss is None or math.isnan(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf
