"""Checkpoints that a crash cannot corrupt, and the state needed to resume a run exactly.

A checkpoint is written into a temporary directory, flushed to disk, renamed into place,
and only then named by `checkpoints/latest` (itself replaced atomically).  A process killed
at any moment leaves `latest` pointing at a complete checkpoint.  Besides the model it holds
optimizer, scheduler, RNG states and the data position, which is all a resumed run needs
to produce the same losses as one that was never interrupted.

Each checkpoint holds `manifest.json`: the size and SHA-256 digest of every other file in it, written
before the rename.  `--resume` verifies the checkpoint it picks (`resumable_checkpoint`) and, when a
file is missing, truncated or altered, falls back to the newest intact one and says which and why;
a checkpoint written before manifests existed is still resumed after lighter checks (its files are
there, state.json parses).  Pinned by tests/train/test_checkpoint_verify.py.

safetensors writes its files through a temporary file, so they come out 0600 whatever the umask;
`save_model` gives them the mode every other file gets (0644 under the usual umask), so a server
running as another user can read the weights.

A checkpoint does not depend on the number of processes that wrote it: the weights and optimizer
state are whole (gathered from FSDP shards when sharded), the data position counts batches of the
epoch order, and rng.pt holds one RNG state per rank (a resumed rank takes its own, or rank 0's).
"""

from __future__ import annotations

import hashlib
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
MANIFEST = "manifest.json"
TRAINING_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt", STATE)  # besides the model directory


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
    umask_modes(directory)


def umask_modes(directory: Path) -> None:
    """Give every file the mode a new file gets under this process's umask (safetensors leaves 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~mask)


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
    if final.is_dir() and (final / STATE).is_file() and verify_checkpoint(final) is None:
        return final  # already saved at this step (e.g. an interrupt right after a scheduled save)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp / "model")
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng if rng is not None else [rng_states()], tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps(asdict(state), indent=2))
    (tmp / MANIFEST).write_text(json.dumps(manifest_of(tmp), indent=1))
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


def resumable_checkpoint(run_dir: Path, say=print) -> Path | None:
    """The checkpoint to resume from: the newest intact one, starting with the one `latest` names.

    Each damaged checkpoint passed over is reported through `say` with what is wrong with it; when
    checkpoints exist but none is intact, RunDirError (resuming from step 0 silently would lose the run).
    """
    from tuneforge.errors import RunDirError

    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    pointer = root / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    candidates.sort(key=lambda p: p.name != named)  # the named one first, then newest first
    problems = []
    for candidate in candidates:
        problem = verify_checkpoint(candidate)
        if problem is None:
            if problems:
                say(f"resuming from {candidate.name}, the newest intact checkpoint, instead")
            return candidate
        problems.append(f"{candidate.name}: {problem}")
        say(f"checkpoint {candidate} is damaged ({problem}); skipping it")
    if problems:
        raise RunDirError(f"no intact checkpoint in {root} to resume from: " + "; ".join(problems)
                          + ". Start the run again with --overwrite")
    return None


def manifest_of(directory: Path) -> dict:
    """{relative path: {size, sha256}} of every file under `directory` (the manifest itself excepted)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": digest}
    return {"version": 1, "files": files}


def verify_checkpoint(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint (a missing, truncated or altered file), or None when it is intact."""
    manifest_path = checkpoint / MANIFEST
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, TypeError) as exc:
            return f"{MANIFEST} is unreadable ({exc})"
        for name, expected in files.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != expected["size"]:
                return f"{name} is {size} bytes, the manifest says {expected['size']}"
            with path.open("rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != expected["sha256"]:
                    return f"{name} does not match its SHA-256 digest in the manifest"
    else:  # written before manifests: the files must be there and the state must parse
        for name in TRAINING_FILES:
            if not (checkpoint / name).is_file() or (checkpoint / name).stat().st_size == 0:
                return f"{name} is missing or empty"
        if not (checkpoint / "model").is_dir():
            return "model/ is missing"
    try:
        read_state(checkpoint)
    except (ValueError, TypeError) as exc:
        return f"{STATE} is unreadable ({exc})"
    return None


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
