"""The run directory a training run owns: refusing to clobber an existing run by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneforge.errors import RunDirError
from tuneforge.train import checkpoint as ckpt


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, accelerator=None) -> Path | None:
    """The checkpoint to resume from, if any; refuses to clobber an existing run by accident.

    Every rank looks before rank 0 clears an overwritten run, so all of them take the same decision.
    """
    checkpoint = ckpt.latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume:
        return checkpoint
    has_run = run_dir.is_dir() and any((run_dir / name).exists() for name in ("checkpoints", "metrics.jsonl", "final"))
    if has_run and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or set output_dir to a new directory"
        )
    if has_run:
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if accelerator is None or accelerator.is_main_process:
            shutil.rmtree(run_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return None
