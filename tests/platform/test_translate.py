"""The OpenAI request -> run file mapping (translate.py), without a server."""

from __future__ import annotations

import pytest

from tuneforge.config import TrainConfig
from tuneforge.platform.protocol import JobRequest
from tuneforge.platform.translate import DEFAULT_GROUP, Start, reported, run_file, validated, with_cadence
from tuneforge.serve.errors import ApiError


def build(tmp_path, tiny_model, **fields):
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    request = JobRequest(model=str(tiny_model), training_file="file-x", **fields)
    return run_file(request, Start(str(tiny_model)), str(data), None, str(tmp_path / "run"), 5)


def test_hyperparameters_map_to_run_file_keys_and_auto_keeps_the_defaults(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": 0.5}}})
    config = validated(raw)
    assert config.task == "chat" and config.method == "lora" and config.train.seed == 5
    assert config.train.epochs == 4 and config.train.batch_size == TrainConfig().batch_size
    assert config.train.learning_rate == pytest.approx(TrainConfig().learning_rate * 0.5)
    assert config.eval.general_check is False
    assert reported("supervised", config)["supervised"]["hyperparameters"] == {
        "n_epochs": 4, "batch_size": TrainConfig().batch_size, "learning_rate_multiplier": pytest.approx(0.5)}


def test_the_tuneforge_field_sets_any_run_file_key_and_hyperparameters_win(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, hyperparameters={"batch_size": 8},
                tuneforge={"method": "full", "train": {"batch_size": 2, "max_seq_length": 64}})
    config = validated(raw)
    assert config.method == "full" and config.train.max_seq_length == 64 and config.train.batch_size == 8


def test_the_server_decides_files_and_output_dir(tmp_path, tiny_model):
    for key in ({"output_dir": "/tmp/x"}, {"data": {"train": ["/etc/passwd"]}}):
        with pytest.raises(ApiError) as refused:
            build(tmp_path, tiny_model, tuneforge=key)
        assert refused.value.status == 400 and refused.value.detail.param.startswith("tuneforge.")


def test_dpo_trains_the_sigmoid_loss_with_openai_s_beta(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25,
                                                                                        "n_epochs": 1}}})
    config = validated(raw)
    assert config.task == "preference" and config.preference.loss == "dpo" and config.preference.beta == 0.25
    assert reported("dpo", config)["dpo"]["hyperparameters"]["beta"] == 0.25


GRADER = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
          "reference": "{{ item.reference_answer }}", "operation": "eq"}


def test_reinforcement_trains_grpo_with_the_grader_as_its_reward(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, method={"type": "reinforcement", "reinforcement": {
        "grader": GRADER, "hyperparameters": {"compute_multiplier": 0.5, "eval_interval": 3, "eval_samples": 16}}})
    config = validated(raw)
    assert config.task == "grpo" and len(config.rewards) == 1 and config.rewards[0].grader.reference == \
        "{{ item.reference_answer }}"
    assert config.grpo.num_generations == round(DEFAULT_GROUP * 0.5) and config.eval.every_steps == 3
    assert config.grpo.eval_max_prompts == 16
    shown = reported("reinforcement", config, {"grader": GRADER})["reinforcement"]
    assert shown["grader"] == GRADER and shown["hyperparameters"]["compute_multiplier"] == pytest.approx(0.5)


@pytest.mark.parametrize(("body", "param", "says"), [
    ({}, "method.reinforcement.grader", "is required"),
    ({"grader": {"type": "string_check", "reference": "x", "operation": "almost"}}, "method.reinforcement.grader",
     "operation"),
    ({"grader": GRADER, "hyperparameters": {"reasoning_effort": "high"}},
     "method.reinforcement.hyperparameters.reasoning_effort", "Unknown hyperparameter"),
    ({"grader": GRADER, "tools": []}, "method.reinforcement.tools", "Unknown or unsupported field"),
])
def test_a_bad_reinforcement_request_is_400_naming_its_field(tmp_path, tiny_model, body, param, says):
    with pytest.raises(ApiError) as refused:
        build(tmp_path, tiny_model, method={"type": "reinforcement", "reinforcement": body})
    assert refused.value.status == 400 and refused.value.detail.param == param and says in refused.value.detail.message


def test_an_unknown_method_is_400_listing_the_three():
    with pytest.raises(ApiError) as refused:
        run_file(JobRequest(model="m", training_file="f", method={"type": "distill"}), Start("m"), "f", None, "r", 0)
    assert refused.value.detail.param == "method.type"
    assert "supervised, dpo, reinforcement" in refused.value.detail.message


def test_cadence_checkpoints_each_epoch_or_each_tenth_whichever_comes_first(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, hyperparameters={"n_epochs": 3, "batch_size": 4})
    cadenced, total = with_cadence(raw, validated(raw), records=100)  # 25 steps an epoch, 75 in all
    assert total == 75 and cadenced["checkpoint"]["every_steps"] == 8 and "every_steps" not in cadenced["eval"]
    cadenced, total = with_cadence(raw, validated(raw), records=8)  # 2 steps an epoch
    assert total == 6 and cadenced["checkpoint"]["every_steps"] == 1
