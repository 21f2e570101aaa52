"""Checkpoints that a crash cannot corrupt, and the state needed to resume a run exactly.

A checkpoint is written into a temporary directory, flushed to disk, renamed into place,
and only then named by `checkpoints/latest` (itself replaced atomically).  A process killed
at any moment leaves `latest` pointing at a complete checkpoint.  Besides the model it holds
optimizer, scheduler, RNG states and the data position, which is all a resumed run needs
to produce the same losses as one that was never interrupted.

A checkpoint does not depend on the number of processes that wrote it: the weights and optimizer
state are whole (gathered from FSDP shards when sharded), the data position counts batches of the
epoch order, and rng.pt holds one RNG state per rank (a resumed rank takes its own, or rank 0's).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tuneforge.files import fsync_tree, write_atomic
from tuneforge.models.load import ModelInfo

LATEST = "latest"
STATE = "state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens_seen: int = 0


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_model(model, tokenizer, info: ModelInfo, directory: Path, weights: dict | None = None) -> None:
    """Adapter only for LoRA (peft's format), full safetensors weights otherwise; plus tokenizer.

    `weights`: the whole state dict when `model` holds only a shard of it (FSDP).
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, **({"state_dict": weights} if weights is not None else {}))
    tokenizer.save_pretrained(directory)
    info.write(directory)


def save_checkpoint(
    run_dir: Path, state: TrainState, write_model: Callable[[Path], None], optimizer, scheduler, keep_last: int,
    rng: list[dict] | None = None, optimizer_state: dict | None = None,
) -> Path:
    """`write_model(directory)` saves the method's model (train/method.py); `rng`: every rank's RNG states
    (default: this process's); `optimizer_state`: the whole state gathered from FSDP shards (default: the
    optimizer's own)."""
    root = checkpoint_root(run_dir)
    name = checkpoint_name(state.step)
    final = root / name
    if final.is_dir() and (final / STATE).is_file():
        return final  # already saved at this step (e.g. an interrupt right after a scheduled save)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp / "model")
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng if rng is not None else [rng_states()], tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps(asdict(state), indent=2))  # written last: marks completeness
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(root / LATEST, name)
    prune(root, keep_last)
    return final


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one if that pointer is missing or stale."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE).is_file():
            return candidate
    complete = sorted(p for p in root.glob("step-*") if (p / STATE).is_file()) if root.is_dir() else []
    return complete[-1] if complete else None


def read_state(checkpoint: Path) -> TrainState:
    return TrainState(**json.loads((checkpoint / STATE).read_text()))


def load_training_state(checkpoint: Path, optimizer, scheduler, rank: int = 0, fsdp_model=None) -> TrainState:
    """Optimizer, scheduler and this rank's RNG state; `fsdp_model`: the sharded model the optimizer belongs to."""
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    if fsdp_model is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(fsdp_model, optimizer.optimizer, optimizer_state,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    states = torch.load(checkpoint / "rng.pt", weights_only=False)
    restore_rng(states if isinstance(states, dict) else states[rank if rank < len(states) else 0])
    return read_state(checkpoint)


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state of a sharded (FSDP) model, whole and keyed by parameter name, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer.optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                         cpu_offload=True))


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints, and the best one (named by best.json) whatever its age."""
    best = root / "best.json"
    keep = json.loads(best.read_text())["checkpoint"] if best.is_file() else None
    complete = sorted(p for p in root.glob("step-*") if (p / STATE).is_file())
    for old in complete[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
