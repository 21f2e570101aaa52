"""OpenAI's dpo and reinforcement jobs train through tuneforge's preference and GRPO methods, end to end."""

from __future__ import annotations

import json

from tests.platform.conftest import TINY_RUN, platform_server, wait_for
from tests.platform.test_translate import GRADER


def dpo_records(n: int) -> list[dict]:
    """OpenAI's DPO file shape: short answers preferred to rambling ones."""
    return [{"input": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
             "non_preferred_output": [{"role": "assistant", "content": f"Well, {i} plus {i} might be {2 * i + 1}."}]}
            for i in range(n)]


def upload(client, path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return client.files.create(file=path.open("rb"), purpose="fine-tune")


def test_a_dpo_job_trains_on_openai_s_preference_file_and_its_model_answers(tiny_served, tmp_path):
    with platform_server(tiny_served, tmp_path / "platform") as platform:
        client = platform.client()
        pairs = upload(client, tmp_path / "pairs.jsonl", dpo_records(12))
        job = client.fine_tuning.jobs.create(
            model=tiny_served.default, training_file=pairs.id, suffix="short", seed=3,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4, "n_epochs": 1}}},
            extra_body={"tuneforge": TINY_RUN})
        done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", done.error
        assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
        metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
        assert any("train_loss" in m for m in metrics)
        answer = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                                messages=[{"role": "user", "content": "What is 2 plus 2?"}])
        assert answer.model == done.fine_tuned_model


def test_a_reinforcement_job_trains_grpo_with_the_openai_grader(tiny_served, tmp_path):
    prompts = [{"messages": [{"role": "user", "content": f"Say {i}."}], "reference_answer": str(i)} for i in range(8)]
    run = {**TINY_RUN, "grpo": {"max_new_tokens": 4}, "train": {**TINY_RUN["train"], "max_steps": 2}}
    with platform_server(tiny_served, tmp_path / "platform") as platform:
        client = platform.client()
        uploaded = upload(client, tmp_path / "prompts.jsonl", prompts)
        job = client.fine_tuning.jobs.create(
            model=tiny_served.default, training_file=uploaded.id, seed=5,
            method={"type": "reinforcement", "reinforcement": {
                "grader": GRADER, "hyperparameters": {"batch_size": 2, "compute_multiplier": 0.25}}},
            extra_body={"tuneforge": run})
        done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", done.error
        assert done.method.reinforcement.grader.name == "exact"
        assert done.method.reinforcement.hyperparameters.compute_multiplier == 0.25
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert any(m.startswith("Files validated (8 training records") for m in messages)


def test_a_file_of_the_wrong_kind_fails_validation_naming_it(tiny_served, tmp_path, training_jsonl):
    with platform_server(tiny_served, tmp_path / "platform") as platform:
        client = platform.client()
        chats = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
        pairs = upload(client, tmp_path / "pairs.jsonl", dpo_records(4))
        prompts = upload(client, tmp_path / "bad-prompts.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                                                   {"reference_answer": "1"}])
        cases = [(chats.id, {"type": "dpo", "dpo": {}}, "holds 24 chat record(s); this method trains preference"),
                 (pairs.id, {"type": "supervised", "supervised": {}}, "holds 4 preference record(s)"),
                 (prompts.id, {"type": "reinforcement", "reinforcement": {"grader": GRADER}},
                  "bad-prompts.jsonl, line 2: missing 'prompt'")]
        for file_id, method, says in cases:
            job = client.fine_tuning.jobs.create(model=tiny_served.default, training_file=file_id, method=method)
            failed = wait_for(client, job.id, ("failed", "queued", "running", "succeeded"), timeout=60)
            assert failed.status == "failed" and says in failed.error.message, failed.error
            assert failed.error.param == "training_file"
