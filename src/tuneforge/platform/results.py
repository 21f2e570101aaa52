"""What a succeeded job leaves: its metrics as a CSV result file, trained tokens, its model's name, a registry version.

The CSV (`step_metrics.csv`, purpose fine-tune-results, downloadable from /v1/files like any
file) has one row per logged step, from the run's metrics.jsonl, with OpenAI's column names
where they exist (train_loss, valid_loss) and tuneforge's own after them. trained_tokens is the
run's count of tokens it trained on (the final checkpoint's tokens_seen). The model is registered
in the model registry with a note naming the job, so `tuneforge models list` shows where it came
from and `tuneforge models promote` can put it in production.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.platform.files import RESULTS_PURPOSE, FileStore
from tuneforge.platform.jobs import Job
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.metrics import read_metrics

COLUMNS = {"step": "step", "train_loss": "train_loss", "eval_loss": "valid_loss", "train_lr": "learning_rate",
           "train_grad_norm": "grad_norm", "train_tokens_per_s": "tokens_per_s", "train_epoch": "epoch"}


def model_name(job: Job) -> str:
    """ft:BASE:SUFFIX:JOBID, as OpenAI names them (an empty SUFFIX without one); BASE is the model's short name."""
    return f"ft:{short_name(job.model)}:{job.suffix or ''}:{job.id}"


def short_name(reference: str) -> str:
    if reference.startswith("ft:"):  # a fine-tune of a fine-tune keeps the first base's name
        return reference.split(":")[1]
    tail = reference.rstrip("/").replace("\\", "/").split("/")[-1]
    return tail.split(":")[-1].removesuffix(".gguf") or "model"


def metrics_csv(run_dir: Path) -> str:
    """One row per step: training values and, at steps with a validation, the validation loss."""
    rows: dict[int, dict] = {}
    extra: list[str] = []
    for record in read_metrics(run_dir):
        row = rows.setdefault(int(record.get("step", 0)), {})
        for key, value in record.items():
            name = COLUMNS.get(key, key)
            if name not in COLUMNS.values() and name not in extra:
                extra.append(name)
            row[name] = value
    header = [*COLUMNS.values(), *extra]
    out = io.StringIO()
    writer = csv.DictWriter(out, header, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue()


def trained_tokens(run_dir: Path) -> int | None:
    latest = ckpt.latest_checkpoint(run_dir)
    return ckpt.read_state(latest).tokens_seen if latest else None


def result_file(job: Job, files: FileStore) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step_metrics.csv"
        path.write_text(metrics_csv(job.run_path))
        return files.add_path(path, "step_metrics.csv", RESULTS_PURPOSE, job.owner).id


def register(job: Job, registry: Path) -> str:
    """The registry version of the job's model (its note names the job)."""
    from tuneforge.registry.runs import register_run
    from tuneforge.registry.store import open_registry

    conn = open_registry(registry)
    try:
        note = f"fine-tuning job {job.id} ({model_name(job)}; training_file {job.training_file})"
        return register_run(conn, job.run_path, note=note).id
    finally:
        conn.close()


def finish(job: Job, files: FileStore, registry: Path | None) -> tuple[dict, list[str]]:
    """(the job's columns to set on success, warnings for its events)."""
    values = {"fine_tuned_model": model_name(job), "trained_tokens": trained_tokens(job.run_path),
              "result_files": [result_file(job, files)]}
    warnings = []
    if registry is not None:
        try:
            values["registry_version"] = register(job, registry)
        except TuneforgeError as exc:
            warnings.append(f"not registered in the model registry: {exc}")
    return values, warnings
