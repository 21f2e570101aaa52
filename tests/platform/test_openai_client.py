"""The official `openai` package, unchanged, against `tuneforge platform`: upload, create, watch, chat with ft:."""

from __future__ import annotations

import csv
import io

import openai
import pytest

from tests.platform.conftest import TINY_HYPERPARAMETERS, TINY_RUN, platform_server, wait_for


def test_openai_client_from_upload_to_chatting_with_the_fine_tune(tiny_served, tmp_path, training_jsonl,
                                                                  validation_jsonl):
    with platform_server(tiny_served, tmp_path / "platform", api_keys=("key-a", "key-b")) as platform:
        client = platform.client("key-a")
        uploaded = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
        assert uploaded.filename == "train.jsonl" and uploaded.bytes == training_jsonl.stat().st_size
        held_out = client.files.create(file=validation_jsonl.open("rb"), purpose="fine-tune")
        assert client.files.retrieve(uploaded.id).id == uploaded.id
        assert client.files.content(uploaded.id).read() == training_jsonl.read_bytes()
        assert {f.id for f in client.files.list()} == {uploaded.id, held_out.id}

        job = client.fine_tuning.jobs.create(
            model=str(tiny_served.default), training_file=uploaded.id, validation_file=held_out.id, suffix="adder",
            seed=7, method={"type": "supervised", "supervised": {"hyperparameters": TINY_HYPERPARAMETERS}},
            extra_body={"tuneforge": TINY_RUN})
        assert job.status == "validating_files" and job.seed == 7
        done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:{tiny_served.default.rstrip('/').split('/')[-1]}:adder:{job.id}"
        assert done.trained_tokens and done.trained_tokens > 0
        assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # auto-pagination, newest first
        messages = [e.message for e in events]
        assert messages[0] == "The job has successfully completed"
        assert any(e.type == "metrics" and e.data.get("valid_loss") is not None for e in events)
        assert messages[-1].startswith("Created fine-tuning job")
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].step_number == done.tuneforge["total_steps"]

        rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
        assert [int(r["step"]) for r in rows] == list(range(0, done.tuneforge["total_steps"] + 1))
        assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"])

        from tuneforge.registry.store import list_versions, open_registry

        versions = list_versions(open_registry(platform.root / "registry.db", create=False))
        assert [v.id for v in versions] == [done.tuneforge["registry_version"]] == ["v1"]
        assert job.id in versions[0].note and versions[0].path == done.tuneforge["run_dir"]

        assert done.fine_tuned_model in {m.id for m in client.models.list()}
        answer = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=8,
                                                messages=[{"role": "user", "content": "What is 3 plus 3?"}])
        assert answer.model == done.fine_tuned_model and answer.choices[0].message.content
        assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]

        other = platform.client("key-b")  # another key sees neither the job nor its model
        assert done.fine_tuned_model not in {m.id for m in other.models.list()}
        assert tiny_served.default in {m.id for m in other.models.list()}
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                          messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError):
            other.files.content(done.result_files[0])
