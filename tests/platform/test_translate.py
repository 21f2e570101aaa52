"""The OpenAI request -> run file mapping (translate.py), without a server."""

from __future__ import annotations

import pytest

from tuneforge.config import TrainConfig
from tuneforge.platform.protocol import JobRequest
from tuneforge.platform.translate import METHODS, PLANNED, Start, reported, run_file, validated, with_cadence
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


def test_every_planned_method_is_refused_by_name_and_none_is_both():
    assert not set(PLANNED) & set(METHODS)
    for method in PLANNED:
        with pytest.raises(ApiError) as refused:
            run_file(JobRequest(model="m", training_file="f", method={"type": method}), Start("m"), "f", None, "r", 0)
        assert method in refused.value.detail.message and refused.value.detail.code == "unsupported_method"


def test_cadence_checkpoints_each_epoch_or_each_tenth_whichever_comes_first(tmp_path, tiny_model):
    raw = build(tmp_path, tiny_model, hyperparameters={"n_epochs": 3, "batch_size": 4})
    cadenced, total = with_cadence(raw, validated(raw), records=100)  # 25 steps an epoch, 75 in all
    assert total == 75 and cadenced["checkpoint"]["every_steps"] == 8 and "every_steps" not in cadenced["eval"]
    cadenced, total = with_cadence(raw, validated(raw), records=8)  # 2 steps an epoch
    assert total == 6 and cadenced["checkpoint"]["every_steps"] == 1
