"""The run directory's guards: one process at a time (an advisory lock), and an output path that can be used.

A run directory is locked by `fcntl.flock` on `RUN_DIR/.tuneforge.lock` for the rest of the process's life:
the kernel releases the lock when the process ends, however it ends (kill -9 included), so a lock is
never stale and there is nothing to clean up. The holder writes its PID into the file, so a second
`tuneforge train` (fresh, `--resume` or `--overwrite`) on a locked run is refused naming the process
that holds it, before it touches anything. Within one process the lock is re-entrant (a hyperparameter
search or a retrain calls `train()` in-process). Only rank 0 of a multi-process run takes it; the other
ranks learn the outcome from rank 0. Readers (export, eval, serve, chat) never lock: they only read
files that are replaced atomically. `--overwrite` deletes everything in the directory but the lock file,
so the lock stays held across it. Pinned by tests/train/test_run_dir.py.

`check_output_dir` turns an unusable `output_dir` (a file, a path under a file, a read-only filesystem,
a name the filesystem refuses) into a RunDirError naming the path and the reason, before any model loads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from tuneforge.errors import RunDirError
from tuneforge.train import checkpoint as ckpt

LOCK_FILE = ".tuneforge.lock"
_held: dict[Path, int] = {}  # resolved run dir -> the open file descriptor holding its lock


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, accelerator=None, lock: bool = True) -> Path | None:
    """The checkpoint to resume from, if any; refuses to clobber an existing run by accident.

    With `lock` (training) the directory is created and locked first; without (a caller that only
    checks, as `tuneforge retrain` does before it writes its run file) nothing is created.
    Every rank looks before rank 0 clears an overwritten run, so all of them take the same decision.
    """
    check_output_dir(run_dir)
    if lock:
        lock_for_ranks(run_dir, accelerator)
    main = accelerator is None or accelerator.is_main_process
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if main else (lambda message: None)
    checkpoint = ckpt.resumable_checkpoint(run_dir, say) if resume and run_dir.is_dir() else None
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
            clear_run_dir(run_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return None


def lock_for_ranks(run_dir: Path, accelerator=None) -> None:
    """Rank 0 creates and locks the directory; every rank raises the same RunDirError when it cannot."""
    from tuneforge.train.distributed import from_main

    problem = None
    if accelerator is None or accelerator.is_main_process:
        try:
            lock_run_dir(run_dir)
        except RunDirError as exc:
            problem = str(exc)
    if accelerator is not None:
        problem = from_main(accelerator, problem)
    if problem:
        raise RunDirError(problem)


def lock_run_dir(run_dir: Path) -> None:
    """Create `run_dir` and hold its lock until this process ends; RunDirError naming the holder's PID if taken."""
    make_output_dir(run_dir)
    key = run_dir.resolve()
    path = key / LOCK_FILE
    held = _held.get(key)
    if held is not None:
        try:
            if os.fstat(held).st_ino == path.stat().st_ino:
                return  # this process holds it already
        except OSError:
            pass
        os.close(held)  # the lock file was removed or replaced under us: lock the one there now
        del _held[key]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"output_dir {run_dir}: cannot create its lock file ({exc.strerror})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        pid = holder[0] if holder else "unknown"
        raise RunDirError(
            f"{run_dir} is in use by another tuneforge process (PID {pid}"
            f"{' on ' + holder[1] if len(holder) > 1 else ''}); wait for it to finish or stop it, "
            "or set output_dir to another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
    _held[key] = fd


def release_run_dir(run_dir: Path) -> None:
    """Give the lock back before the process ends (a long-lived process that trains one run after another)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def clear_run_dir(run_dir: Path) -> None:
    """Delete an overwritten run: everything in the directory except the lock this process holds."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_output_dir(run_dir: Path, label: str = "output_dir") -> None:
    """RunDirError unless `run_dir` is (or can become) a directory this process can write; creates nothing.

    `label` names the setting in the message (`output_dir`, or `--to` for an export)."""
    path = Path(run_dir)
    try:
        existing = nearest_existing(path)
        if existing == path and not path.is_dir():
            raise RunDirError(f"{label} {path} is a file, not a directory; set {label} to a directory")
        if not existing.is_dir():
            raise RunDirError(f"{label} {path}: {existing} is a file, so no directory can be made under it")
        limit = os.pathconf(existing, "PC_NAME_MAX")
        if any(len(os.fsencode(part)) > limit for part in path.parts):
            raise RunDirError(f"{label} {path}: a name in it is longer than the filesystem allows ({limit} bytes)")
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise RunDirError(f"{label} {path}: {existing} is on a read-only filesystem")
    except OSError as exc:
        raise RunDirError(f"{label} {path}: cannot be used: {exc.strerror or exc}") from exc
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"{label} {path}: {existing} is not writable by this user")


def nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its closest existing ancestor (names too long never exist)."""
    while True:
        try:
            os.stat(path)
            return path
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                raise RunDirError(f"output_dir: {path} is a broken symbolic link") from None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
        if path.parent == path:
            return path
        path = path.parent


def make_output_dir(run_dir: Path) -> None:
    """mkdir -p, with the reason in words when the filesystem refuses (what check_output_dir cannot foresee)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = {errno.EEXIST: "a file is in the way", errno.ENOTDIR: "a part of the path is a file",
                  errno.EROFS: "the filesystem is read-only", errno.ENAMETOOLONG: "the path is too long"}
        raise RunDirError(f"output_dir {run_dir}: cannot create it: "
                          f"{reason.get(exc.errno, exc.strerror or type(exc).__name__)}") from exc
