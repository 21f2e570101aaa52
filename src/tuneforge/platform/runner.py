"""The job runner: one thread that validates jobs, starts queued ones as processes, watches them, and recovers.

Each job trains in its own process, `python -m tuneforge train RUN.yaml` (with `--resume` after a
pause or a restart), in its own run directory under TUNEFORGE_HOME/platform/runs/JOB_ID, so a
crashing job cannot take the server down and everything the CLI does with a run works on it. At
most `max_concurrent` train at once (1 by default); the rest wait in the queue, oldest first.

Stopping a process (cancel, pause, server shutdown) is SIGTERM, which the training loop turns
into "save a checkpoint after this step and exit" (train/signals.py), then SIGKILL after the grace
period; the last checkpoint is kept either way. A child asks the kernel for SIGTERM when the
server dies (PR_SET_PDEATHSIG, Linux), so a kill -9 of the server also checkpoints and stops its
jobs. A restarted server first stops any job process still alive from before (its pid is in the
database), then queues every job that was running to resume from its last checkpoint (exact, as
the loop resumes: tests/platform/test_restart.py), and validates the jobs left in validating_files.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from tuneforge.platform.defaults import GRACE_S, MAX_CONCURRENT_JOBS
from tuneforge.models.load import MODEL_INFO
from tuneforge.platform.events import EventLog, MetricsTail
from tuneforge.platform.files import FileStore
from tuneforge.platform.jobs import Job, JobStore
from tuneforge.platform.results import finish
from tuneforge.platform.translate import METHODS, reported, validated, with_cadence
from tuneforge.platform.validate import JobError
from tuneforge.serve.errors import ApiError
from tuneforge.train import checkpoint as ckpt

log = logging.getLogger("tuneforge.platform")
RUN_FILE = "run.yaml"
JOB_LOG = "job.log"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunnerSettings:
    max_concurrent: int = MAX_CONCURRENT_JOBS
    grace_s: float = GRACE_S  # SIGTERM, then SIGKILL after this
    poll_s: float = 0.5
    registry: Path | None = None  # where succeeded jobs' models are registered; None: not registered
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {self.max_concurrent}")
        if self.grace_s < 0 or self.poll_s <= 0:
            raise ValueError("grace_s must be >= 0 and poll_s > 0")


@dataclass
class Child:
    job_id: str
    process: subprocess.Popen
    tail: MetricsTail
    output: IO
    signalled: float | None = None
    killed: bool = False


@dataclass
class Runner:
    jobs: JobStore
    files: FileStore
    events: EventLog
    settings: RunnerSettings = field(default_factory=RunnerSettings)

    def __post_init__(self) -> None:
        self.children: dict[str, Child] = {}
        self.stopping = threading.Event()
        self.validator = ThreadPoolExecutor(1, thread_name_prefix="tuneforge-validate")
        self.validating: Future | None = None  # one job validated at a time, beside the watching
        self.thread = threading.Thread(target=self.run, name="tuneforge-jobs", daemon=True)

    def start(self) -> Runner:
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Checkpoint and stop the running jobs (they resume when the server starts again); True if all stopped."""
        self.stopping.set()
        self.thread.join(timeout)
        self.validator.shutdown(wait=False, cancel_futures=True)
        return not self.thread.is_alive()

    def run(self) -> None:
        self.recover()
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick (a full disk, a locked database) must not end the runner
                log.exception("jobs runner: tick failed; trying again")
            self.stopping.wait(self.settings.poll_s)
        self.shut_down()

    def tick(self) -> None:
        self.validate_next()
        for child in list(self.children.values()):
            self.watch(child)
        self.start_queued()

    # --- validating_files -> queued ---------------------------------------------------------------

    def validate_next(self) -> None:
        if self.validating is not None and not self.validating.done():
            return
        waiting = self.jobs.with_status("validating_files")
        if waiting:
            self.validating = self.validator.submit(self.validate, waiting[0])

    def validate(self, job: Job) -> None:
        try:
            run_file = job.run_path / RUN_FILE
            raw = yaml.safe_load(run_file.read_text())
            files = {"training_file": self.stored(job.training_file, "training_file")}
            if job.validation_file:
                files["validation_file"] = self.stored(job.validation_file, "validation_file")
            try:
                config = validated(raw)
            except ApiError as exc:
                raise JobError("invalid_run_file", exc.detail.message, exc.detail.param) from None
            kind = job.method["type"]
            records = METHODS[kind].check(config, files, METHODS[kind].kinds)
            raw, total = with_cadence(raw, config, records)
            write_atomic(run_file, yaml.safe_dump(raw, sort_keys=False))
            self.jobs.move(job.id, "queued", ("validating_files",), f"Files validated ({records} training records, "
                           f"{total} steps); job queued", total_steps=total, method=reported(kind, config, job.method[kind]))
        except JobError as exc:
            self.jobs.move(job.id, "failed", ("validating_files",), f"Validation failed: {exc.message}", "error",
                           error=exc.to_api())
        except Exception as exc:
            log.exception("validating %s", job.id)
            self.jobs.move(job.id, "failed", ("validating_files",), f"Validation failed: {exc}", "error",
                           error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None})

    def stored(self, file_id: str, param: str):
        try:
            return self.files.get(file_id, None, param)
        except ApiError:
            raise JobError("invalid_file", f"{param} {file_id} no longer exists", param) from None

    # --- queued -> running -> succeeded | failed ----------------------------------------------------

    def start_queued(self) -> None:
        for job in self.jobs.with_status("queued"):
            if len(self.children) >= self.settings.max_concurrent:
                return
            if job.pid is None and job.id not in self.children:
                self.launch(job)

    def launch(self, job: Job) -> None:
        latest = ckpt.latest_checkpoint(job.run_path) if job.resume else None
        step = ckpt.read_state(latest).step if latest else 0
        message = f"Fine-tuning job resumed from step {step}" if latest else "Fine-tuning job started"
        if not self.jobs.move(job.id, "running", ("queued",), message, started_at=job.started_at or int(time.time())):
            return
        command = [self.settings.python, "-m", "tuneforge", "train", str(job.run_path / RUN_FILE)]
        command += ["--resume"] if job.resume else []
        output = (job.run_path / JOB_LOG).open("ab")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       cwd=job.run_path, env=environment, preexec_fn=die_with_parent)
        except OSError as exc:
            output.close()
            self.jobs.move(job.id, "failed", ("running",), f"The training process could not start: {exc}", "error",
                           error={"code": "internal_error", "message": f"cannot start {command[0]}: {exc}",
                                  "param": None})
            return
        self.jobs.update(job.id, pid=process.pid)
        self.children[job.id] = Child(job.id, process, MetricsTail(self.events, job.id, job.run_path, job.total_steps),
                                      output)

    def watch(self, child: Child) -> None:
        child.tail.poll()
        job = self.jobs.find(child.job_id, anyone=True)
        code = child.process.poll()
        if code is None:
            if job.status != "running" or self.stopping.is_set():
                self.signal(child)
            return
        child.tail.poll()
        child.output.close()
        del self.children[child.job_id]
        self.jobs.update(job.id, pid=None)
        if job.status != "running":  # cancelled or paused (and maybe resumed since)
            latest = ckpt.latest_checkpoint(job.run_path)
            kept = f"; its checkpoint at step {ckpt.read_state(latest).step} is kept" if latest else ""
            self.events.add(job.id, f"Training process stopped{kept}")
        elif code == 0:
            self.succeed(job)
        else:
            self.jobs.move(job.id, "failed", ("running",), "Fine-tuning job failed", "error",
                           error={"code": "training_failed", "param": None,
                                  "message": failure(job.run_path / JOB_LOG, code)})

    def signal(self, child: Child) -> None:
        """SIGTERM once (checkpoint and exit), SIGKILL once the grace period has passed."""
        now = time.monotonic()
        if child.signalled is None:
            child.signalled = now
            child.process.send_signal(signal.SIGTERM)
        elif not child.killed and now - child.signalled > self.settings.grace_s:
            child.killed = True
            child.process.kill()

    def succeed(self, job: Job) -> None:
        try:
            values, warnings = finish(job, self.files, self.settings.registry)
        except Exception as exc:
            log.exception("finishing %s", job.id)
            self.jobs.move(job.id, "failed", ("running",), f"The job's results could not be saved: {exc}", "error",
                           error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
            return
        self.events.add(job.id, f"New fine-tuned model created: {values['fine_tuned_model']}")
        if values.get("registry_version"):
            self.events.add(job.id, f"Registered in the model registry as {values['registry_version']}")
        for warning in warnings:
            self.events.add(job.id, warning, "warn")
        self.jobs.move(job.id, "succeeded", ("running",), "The job has successfully completed", **values)

    # --- restarts and shutdown --------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart (also a kill -9): stop orphans, then resume what was running."""
        for job in self.jobs.with_process():
            stop_orphan(job.pid, job.run_path / RUN_FILE, self.settings.grace_s)
            self.jobs.update(job.id, pid=None)
        for job in self.jobs.with_status("running"):
            if (job.run_path / "final" / MODEL_INFO).is_file() and (job.run_path / "data_manifest.json").is_file():
                self.succeed(job)
            else:
                self.jobs.move(job.id, "queued", ("running",), "The server restarted: the job is queued to resume from "
                               "its last checkpoint", resume=1)

    def shut_down(self) -> None:
        deadline = time.monotonic() + self.settings.grace_s
        for child in self.children.values():
            self.signal(child)
        for child in list(self.children.values()):
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.tail.poll()
            child.output.close()
            job = self.jobs.find(child.job_id, anyone=True)
            self.jobs.update(job.id, pid=None, resume=1)
            if job.status == "running":
                self.events.add(job.id, "The server stopped: the job resumes from its last checkpoint when it starts "
                                "again")
        self.children.clear()


def failure(path: Path, code: int) -> str:
    """The training process's own error line (`error: ...`), else its last lines."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    detail = errors[-1] if errors else " | ".join(lines[-3:]) or "no output"
    return f"training exited with status {code}: {detail} (the whole log: {path})"


def stop_orphan(pid: int, run_file: Path, grace_s: float) -> None:
    """Stop a training process left from the server's previous life, if `pid` is still that process."""
    try:
        if str(run_file).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    except OSError:  # gone already (or never ours to signal)
        return


def alive(pid: int) -> bool:
    """Running, and not a zombie left for a parent that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return False


LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the server dies, so a killed server's jobs checkpoint and stop."""
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
