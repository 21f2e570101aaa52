"""A server killed with kill -9 during a running job: restarted, it resumes the job, which ends as an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.platform.conftest import TINY_RUN, wait_for
from tests.serve.conftest import free_port


def start_server(model: Path, root: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuneforge", "platform", str(model), "--port", str(port), "--platform-dir",
               str(root), "--registry", str(root / "registry.db"), "--job-grace", "20", "--no-log", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(root.parent / "server.log").open("ab"))
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, (root.parent / "server.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)


def train_losses(client, job_id: str) -> dict[int, float]:
    """step -> training loss, from the job's metrics events (each step reported once, even across the restart)."""
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=1000) if e.type == "metrics"]
    steps = [e.data["step"] for e in events if "train_loss" in e.data]
    assert len(steps) == len(set(steps)), "a step was reported twice"
    return {e.data["step"]: e.data["train_loss"] for e in events if "train_loss" in e.data}


def test_kill_9_during_a_job_then_restart_finishes_it_as_if_uninterrupted(tiny_model, tmp_path, training_jsonl):
    from openai import OpenAI

    root, port = tmp_path / "platform", free_port()
    root.mkdir()
    request = dict(model=str(tiny_model), seed=3, method={"type": "supervised", "supervised": {"hyperparameters": {
        "batch_size": 2, "learning_rate_multiplier": 5}}},
        extra_body={"tuneforge": {**TINY_RUN, "train": {**TINY_RUN["train"], "max_steps": 60}}})
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=2, timeout=60)
    server = start_server(tiny_model, root, port)
    try:
        uploaded = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=uploaded.id, **request)
        deadline = time.monotonic() + 240
        while max(train_losses(client, job.id), default=0) < 8:  # past the first checkpoint (step 6)
            assert time.monotonic() < deadline and client.fine_tuning.jobs.retrieve(job.id).status in (
                "validating_files", "queued", "running")
            time.sleep(0.1)
        server.send_signal(signal.SIGKILL)
        server.wait()
    finally:
        if server.poll() is None:
            server.kill()
    server = start_server(tiny_model, root, port)
    try:
        resumed = wait_for(client, job.id, ("succeeded", "failed", "cancelled"), timeout=300)
        assert resumed.status == "succeeded", resumed.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert "The server restarted: the job is queued to resume from its last checkpoint" in messages
        resumed_from = [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("Fine-tuning job resumed from step ")]
        assert resumed_from and resumed_from[0] >= 6  # from a checkpoint, not from the start

        reference = client.fine_tuning.jobs.create(training_file=uploaded.id, **request)
        finished = wait_for(client, reference.id, ("succeeded", "failed", "cancelled"), timeout=300)
        assert finished.status == "succeeded", finished.error
        expected, got = train_losses(client, reference.id), train_losses(client, job.id)
        assert sorted(got) == sorted(expected) == list(range(1, 61))
        for step in expected:
            assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
