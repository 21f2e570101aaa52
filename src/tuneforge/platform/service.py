"""What the jobs routes do: create a job from a request, cancel, pause, resume; and the job as the API shows it.

Creation checks everything that can be checked at once and answers 400 naming the field: the
files exist, belong to the caller and are for fine-tuning; the model resolves (a base model, a
model this server serves, or the caller's own `ft:` model to train further); the method is one
tuneforge trains; the run file the request makes is valid. The job is then stored as
validating_files with its run file in its run directory, and the runner (runner.py) takes over.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneforge.errors import TuneforgeError
from tuneforge.platform.db import new_id
from tuneforge.platform.files import UPLOAD_PURPOSES, FileStore, StoredFile
from tuneforge.platform.jobs import FINISHED, Job, JobStore
from tuneforge.platform.protocol import JobRequest
from tuneforge.platform.results import model_name
from tuneforge.platform.runner import RUN_FILE
from tuneforge.platform.translate import METHODS, Start, method_body, method_of, run_file, validated
from tuneforge.serve.errors import ApiError
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.metrics import read_metrics


@dataclass
class Jobs:
    jobs: JobStore
    files: FileStore
    runs: Path  # TUNEFORGE_HOME/platform/runs: one run directory per job
    served_models: dict[str, str]  # the names this server serves its base models under -> their references

    def create(self, request: JobRequest, owner: str | None) -> Job:
        training = self.training_file(request.training_file, owner, "training_file")
        validation = self.training_file(request.validation_file, owner, "validation_file") \
            if request.validation_file else None
        if request.integrations:
            raise ApiError(400, "integrations are not supported by tuneforge (its runs log to TensorBoard and "
                           "metrics.jsonl in the run directory)", param="integrations", code="unsupported_field")
        start = self.start(request.model, owner)
        kind, given = method_of(request)
        job_id = new_id("ftjob")
        run_dir = self.runs / job_id
        run_seed = ((request.tuneforge or {}).get("train") or {}).get("seed")
        seed = request.seed if request.seed is not None else run_seed if isinstance(run_seed, int) \
            else random.randrange(2**31)
        raw = run_file(request, start, training.path, validation.path if validation else None, str(run_dir), seed)
        validated(raw)
        run_dir.mkdir(parents=True)
        (run_dir / RUN_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
        hyperparameters = {name: given.get(name, "auto") for name in METHODS[kind].hyperparameters}
        settings = {key: value for key, value in method_body(request).items() if key != "hyperparameters"}
        job = Job(id=job_id, owner=owner, created_at=int(time.time()), status="validating_files",
                  model=request.model, training_file=training.id, validation_file=validation and validation.id,
                  suffix=request.suffix, seed=seed, method={"type": kind, kind: {**settings, "hyperparameters": hyperparameters}},
                  metadata=request.metadata, tuneforge=request.tuneforge, run_dir=str(run_dir))
        return self.jobs.create(job)

    def training_file(self, file_id: str, owner: str | None, param: str) -> StoredFile:
        try:
            stored = self.files.get(file_id, owner, param)
        except ApiError:
            raise ApiError(400, f"{param}: no such file '{file_id}' (upload it with purpose 'fine-tune' first)",
                           param=param, code="invalid_file") from None
        if stored.purpose not in UPLOAD_PURPOSES:
            raise ApiError(400, f"{param}: file '{file_id}' has purpose '{stored.purpose}'; a job trains on files "
                           f"uploaded with purpose 'fine-tune'", param=param, code="invalid_file")
        return stored

    def start(self, model: str, owner: str | None) -> Start:
        """What `model` names: the caller's fine-tune (trained further), a model this server serves, or a reference."""
        if model.startswith("ft:"):
            entry = self.jobs.find_model(model, owner)
            if entry is None or ":ckpt-step-" in model:
                raise ApiError(400, f"model: no fine-tuned model '{model}' of yours has finished", param="model",
                               code="model_not_available")
            return Start(entry.parent, entry.path)
        reference = self.served_models.get(model, model)
        from tuneforge.models import embedded
        from tuneforge.models.resolve import resolve

        try:
            if reference.startswith(embedded.PREFIX):
                embedded.lookup(reference.removeprefix(embedded.PREFIX))
            else:
                resolve(reference)
        except TuneforgeError as exc:
            raise ApiError(400, f"model: {exc}", param="model", code="model_not_available") from None
        return Start(reference)

    def cancel(self, job_id: str, owner: str | None) -> Job:
        job = self.jobs.find(job_id, owner)
        if job.status in FINISHED:
            raise ApiError(400, f"Job {job_id} has already {job.status}; there is nothing to cancel",
                           param="fine_tuning_job_id", code="job_finished")
        self.jobs.move(job_id, "cancelled", ("validating_files", "queued", "running", "paused"),
                       "Job cancelled" + ("; its training process stops after a checkpoint" if job.pid else ""))
        return self.jobs.find(job_id, owner)

    def pause(self, job_id: str, owner: str | None) -> Job:
        job = self.jobs.find(job_id, owner)
        if not self.jobs.move(job_id, "paused", ("queued", "running"), "Job paused: its training process stops "
                              "after a checkpoint; resume continues from there" if job.pid else "Job paused", resume=1):
            raise ApiError(400, f"Job {job_id} is {job.status}; only a queued or running job can be paused",
                           param="fine_tuning_job_id", code="invalid_status")
        return self.jobs.find(job_id, owner)

    def resume(self, job_id: str, owner: str | None) -> Job:
        job = self.jobs.find(job_id, owner)
        if not self.jobs.move(job_id, "queued", ("paused",), "Job resumed: queued to continue from its last "
                              "checkpoint", resume=1):
            raise ApiError(400, f"Job {job_id} is {job.status}; only a paused job can be resumed",
                           param="fine_tuning_job_id", code="invalid_status")
        return self.jobs.find(job_id, owner)


def job_api(job: Job) -> dict:
    """OpenAI's `fine_tuning.job`, and tuneforge's own details under `tuneforge`."""
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "error": job.error,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at,
        "hyperparameters": job.hyperparameters, "model": job.model, "organization_id": "tuneforge",
        "result_files": job.result_files, "seed": job.seed, "status": job.status,
        "trained_tokens": job.trained_tokens, "training_file": job.training_file,
        "validation_file": job.validation_file, "estimated_finish": None, "integrations": [],
        "metadata": job.metadata, "method": job.method, "user_provided_suffix": job.suffix,
        "tuneforge": {"run_dir": job.run_dir, "total_steps": job.total_steps, "started_at": job.started_at,
                      "registry_version": job.registry_version, "run_file": job.tuneforge},
    }


def checkpoints_api(job: Job) -> list[dict]:
    """The run's kept checkpoints, newest first, as `fine_tuning.job.checkpoint` objects."""
    root = ckpt.checkpoint_root(job.run_path)
    found = sorted((p for p in root.glob("step-*") if (p / ckpt.STATE).is_file()), reverse=True) \
        if root.is_dir() else []
    metrics: dict[int, dict] = {}
    for record in read_metrics(job.run_path):
        metrics.setdefault(int(record.get("step", 0)), {}).update(record)
    out = []
    for path in found:
        step = ckpt.read_state(path).step
        values = metrics.get(step, {})
        out.append({
            "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}", "object": "fine_tuning.job.checkpoint",
            "created_at": int(path.stat().st_mtime), "fine_tuning_job_id": job.id, "step_number": step,
            "fine_tuned_model_checkpoint": f"{model_name(job)}:ckpt-step-{step}",
            "metrics": {"step": step, "train_loss": values.get("train_loss"), "valid_loss": values.get("eval_loss")},
        })
    return out
