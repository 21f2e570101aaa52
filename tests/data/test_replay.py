"""Replay: the mix ratio, the answer cache (a second run generates nothing), and cache invalidation."""

import json
import shutil

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.data.batching import collate
from tuneforge.data.replay import builtin_prompts, pick, replay_count
from tuneforge.data.template import IGNORE, TokenizedExample, without_end_of_turn
from tuneforge.data.probes import read_probes
from tuneforge.models.answer_cache import base_answers
from tuneforge.models.generate import Sampling
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.train.driver import train

from tests.conftest import chat_records, write_jsonl


@pytest.mark.parametrize(("task", "ratio", "expected"), [(100, 0.25, 33), (24, 0.5, 24), (10, 0.0, 0), (90, 0.3, 39)])
def test_replay_count_makes_ratio_of_the_mix(task, ratio, expected):
    count = replay_count(task, ratio)
    assert count == expected
    if count:
        assert count / (task + count) == pytest.approx(ratio, abs=0.01)


def test_pick_is_seeded_distinct_within_the_pool_and_cycles_beyond_it():
    assert pick(10, 5, seed=1) == pick(10, 5, seed=1)
    assert pick(10, 5, seed=1) != pick(10, 5, seed=2)
    assert len(set(pick(10, 10, seed=3))) == 10
    beyond = pick(4, 10, seed=3)
    assert len(beyond) == 10 and set(beyond) == {0, 1, 2, 3}


def prompt_file(tmp_path, n, name="prompts.jsonl"):
    return write_jsonl(tmp_path / name, [{"prompt": f"Tell me something about the number {i}."} for i in range(n)])


def replay_run(run_config, tmp_path, **replay):
    return load_config(run_config(**{
        "data.replay": {"ratio": 0.5, "max_new_tokens": 6, **replay},
        "eval.general_check": False,
        "train.max_steps": 2,
    }))


def manifest(run_dir):
    return json.loads((run_dir / "data_manifest.json").read_text())


def test_self_replay_mixes_at_ratio_and_second_run_generates_nothing(run_config, tmp_path):
    config = replay_run(run_config, tmp_path, prompts=str(prompt_file(tmp_path, 40)))
    first = manifest(train(config).run_dir)
    assert first["replay_records"] == 24  # 24 task records at ratio 0.5
    assert first["train_records"] == 48
    assert first["replay_generated"] == 24
    assert first["replay_tokens"] > 0 and first["train_tokens"] > first["replay_tokens"]
    saved = (config.output_dir / "data" / "replay.jsonl").read_text().splitlines()
    assert len(saved) == 1 + 24  # a header line naming the source, then the records

    second = manifest(train(config, overwrite=True).run_dir)
    assert second["replay_generated"] == 0
    assert second["replay_records"] == 24
    assert (config.output_dir / "data" / "replay.jsonl").read_text().splitlines() == saved


def test_dataset_replay_draws_from_the_named_file(run_config, tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", [
        {"messages": [{"role": "user", "content": f"Name colour {i}."}, {"role": "assistant", "content": "Blue."}]}
        for i in range(5)
    ])
    config = replay_run(run_config, tmp_path, ratio=0.25, data=str(general))
    result = manifest(train(config).run_dir)
    assert result["replay_records"] == 8  # round(24 * 0.25 / 0.75); the 5 records cycle
    assert result["replay_generated"] == 0
    assert "5 of 5 records from general.jsonl" in result["replay_source"]


@pytest.fixture
def tiny(tiny_model):
    return load_causal_lm(tiny_model, torch.float32).eval(), load_tokenizer(tiny_model)


def test_cache_keeps_answers_and_regenerates_only_changed_prompts(tiny, tiny_model):
    model, tokenizer = tiny
    sampling = Sampling(max_new_tokens=5)
    prompts = ["What is 1 plus 1?", "What is 2 plus 2?", "What is 3 plus 3?"]
    first, generated = base_answers(model, tokenizer, tiny_model, prompts, sampling)
    assert generated == 3
    again, generated = base_answers(model, tokenizer, tiny_model, prompts, sampling)
    assert generated == 0 and again == first
    edited, generated = base_answers(model, tokenizer, tiny_model, [*prompts[:2], "What is 9 plus 9?"], sampling)
    assert generated == 1 and edited[:2] == first[:2]
    _, generated = base_answers(model, tokenizer, tiny_model, prompts, Sampling(max_new_tokens=7))
    assert generated == 3  # other decoding settings, other answers


def test_cache_is_invalidated_when_the_base_model_changes(tiny, tiny_model, tmp_path):
    model, tokenizer = tiny
    prompts = ["What is 5 plus 5?", "What is 6 plus 6?"]
    base_answers(model, tokenizer, tiny_model, prompts, Sampling(max_new_tokens=4))
    changed = tmp_path / "changed-model"
    shutil.copytree(tiny_model, changed)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.1)
    model.save_pretrained(changed)
    _, generated = base_answers(model, tokenizer, changed, prompts, Sampling(max_new_tokens=4))
    assert generated == 2


def test_a_cut_off_answer_does_not_train_its_end_of_turn():
    tokens = TokenizedExample([5, 6, 7, 2, 9], [IGNORE, 6, 7, 2, IGNORE])
    assert without_end_of_turn(tokens, [2]).labels == [IGNORE, 6, 7, IGNORE, IGNORE]
    assert without_end_of_turn(tokens, [3]).labels == tokens.labels  # no end-of-turn was trained


def test_collate_marks_replay_rows():
    batch = collate([TokenizedExample([1, 2], [1, 2]), TokenizedExample([3], [3], replay=True)], pad_id=0)
    assert batch["replay"].tolist() == [False, True]


def test_shipped_prompt_sets_are_large_varied_and_disjoint():
    from tuneforge.evaluate.before_after import builtin_general_questions

    replay = read_probes(builtin_prompts())
    general = read_probes(builtin_general_questions())
    assert len(replay) >= 300 and len(general) >= 40
    assert all(p.expect for p in general)
    assert not {p.prompt.lower() for p in replay} & {p.prompt.lower() for p in general}
    kinds = {json.loads(line)["kind"] for line in builtin_prompts().read_text().splitlines()}
    assert {"fact", "arithmetic", "howto", "writing", "definition"} <= kinds


def test_a_broken_prompt_file_is_named_with_its_line_before_training(run_config, tmp_path):
    from tuneforge.errors import DataError

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a colour."}\n{"prompt": \n{"text": "no prompt key"}\n')
    config = replay_run(run_config, tmp_path, prompts=str(prompts))
    with pytest.raises(DataError) as error:
        train(config)
    message = str(error.value)
    assert "prompts.jsonl:2" in message and "prompts.jsonl:3: 'prompt' is missing" in message
    assert not (config.output_dir / "checkpoints").exists()


def test_a_broken_general_questions_file_is_named_with_its_line(run_config, tmp_path):
    from tuneforge.errors import DataError

    questions = write_jsonl(tmp_path / "general.jsonl", [{"prompt": "Capital of France?", "expect": 3}])
    config = load_config(run_config(**{"eval.general_questions": str(questions)}))
    with pytest.raises(DataError, match=r"general.jsonl:1: 'expect' must be a string or a list of strings"):
        train(config)
