"""Queue, pause, resume and cancel: one job trains at a time, a paused job continues from its checkpoint."""

from __future__ import annotations

import time

from tests.platform.conftest import TINY_RUN, platform_server, wait_for


def metrics_steps(client, job_id: str) -> list[int]:
    return sorted(e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)
                  if e.type == "metrics" and "train_loss" in e.data)


def stopped(client, job_id: str) -> bool:
    return any(e.message.startswith("Training process stopped") for e in client.fine_tuning.jobs.list_events(job_id))


def test_queue_pause_resume_and_cancel(tiny_served, tmp_path, training_jsonl):
    run = {**TINY_RUN, "train": {**TINY_RUN["train"], "max_steps": 24}}
    with platform_server(tiny_served, tmp_path / "platform") as platform:
        client = platform.client()
        uploaded = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
        create = dict(model=tiny_served.default, training_file=uploaded.id, seed=1, hyperparameters={"batch_size": 2},
                      extra_body={"tuneforge": run})
        first, second = client.fine_tuning.jobs.create(**create), client.fine_tuning.jobs.create(**create)
        wait_for(client, first.id, ("running",), timeout=60)
        assert wait_for(client, second.id, ("queued",), timeout=60).status == "queued"  # one job at a time

        cancelled = client.fine_tuning.jobs.cancel(second.id)  # queued: no process to stop
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None

        deadline = time.monotonic() + 120
        while not metrics_steps(client, first.id) or metrics_steps(client, first.id)[-1] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.fine_tuning.jobs.pause(first.id).status == "paused"
        deadline = time.monotonic() + 60
        while not stopped(client, first.id):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.fine_tuning.jobs.retrieve(first.id).status == "paused"
        assert client.fine_tuning.jobs.resume(first.id).status == "queued"
        done = wait_for(client, first.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert metrics_steps(client, first.id) == list(range(1, 25))  # each step once, across the pause
        messages = [e.message for e in client.fine_tuning.jobs.list_events(first.id, limit=1000)]
        assert any(m.startswith("Fine-tuning job resumed from step ") and not m.endswith(" 0") for m in messages)

        third = client.fine_tuning.jobs.create(**create)
        wait_for(client, third.id, ("running",), timeout=60)
        while not metrics_steps(client, third.id):
            time.sleep(0.1)
        assert client.fine_tuning.jobs.cancel(third.id).status == "cancelled"
        deadline = time.monotonic() + 60
        while not stopped(client, third.id):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.fine_tuning.jobs.retrieve(third.id).status == "cancelled"
        assert (platform.root / "runs" / third.id / "checkpoints").is_dir()  # the last checkpoint is kept
