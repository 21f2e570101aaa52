"""Preference and rated-reply data for training: the shared prompt, answer-only labels, same-budget
truncation, multi-turn prompts, LLaMA-Factory's newer shape, and every bad record named by file and line."""

from __future__ import annotations

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.formats import read_records
from tuneforge.data.preference import prepare_preference
from tuneforge.data.template import IGNORE
from tuneforge.errors import DataError

from tests.conftest import write_jsonl


def prepared(tmp_path, tokenizer, records, task="preference", max_len=128, **data):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    config = DataConfig(train=[str(path)], **data)
    return prepare_preference(config, task, tokenizer, [tokenizer.eos_token_id], max_len, 0), path


PAIR = {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "It could be 5, or maybe 22, hard to say."}


def test_prompt_is_shared_and_only_answers_are_labelled(tmp_path, chatml_tokenizer):
    data, _ = prepared(tmp_path, chatml_tokenizer, [PAIR])
    example = data.train[0]
    chosen, rejected = example.answers
    assert chatml_tokenizer.decode(example.prompt).endswith("<|im_start|>assistant\n")
    assert "What is 2 plus 2?" in chatml_tokenizer.decode(example.prompt)
    assert chatml_tokenizer.decode([t for t, l in zip(chosen.input_ids, chosen.labels) if l != IGNORE]) == "4.<|im_end|>"
    assert "hard to say" in chatml_tokenizer.decode(rejected.input_ids)
    assert chosen.input_ids[0] != rejected.input_ids[0] or chosen.input_ids != rejected.input_ids


def test_multi_turn_prompt_trains_only_the_final_answers(tmp_path, chatml_tokenizer):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                           {"role": "user", "content": "Add 1 and 1"}],
              "chosen": {"role": "assistant", "content": "2."},
              "rejected": {"role": "assistant", "content": "Three, I believe."}}
    data, _ = prepared(tmp_path, chatml_tokenizer, [record])
    example = data.train[0]
    assert "Hello there" in chatml_tokenizer.decode(example.prompt)
    trained = [t for t, l in zip(example.answers[0].input_ids, example.answers[0].labels) if l != IGNORE]
    assert chatml_tokenizer.decode(trained) == "2.<|im_end|>"


def test_truncation_keeps_the_prompt_and_cuts_both_answers_alike(tmp_path, chatml_tokenizer):
    long = {"prompt": "Say something.", "chosen": "word " * 80, "rejected": "other " * 90}
    data, _ = prepared(tmp_path, chatml_tokenizer, [long, PAIR], max_len=80)
    example = next(e for e in data.train if e.truncated)
    assert example.length() == 80
    assert all(len(example.prompt) + len(a.input_ids) <= 80 for a in example.answers)
    assert data.manifest()["truncated_pairs"] == 1


@pytest.mark.parametrize("record,reason", [
    ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}, "same reply"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No."}, "missing or empty"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "No.", "images": ["cat.png"]}, "images"),
    ({"prompt": "<image> What is this?", "chosen": "A cat.", "rejected": "A dog."}, "<image> marker"),
    ({"prompt": "long " * 200, "chosen": "Yes.", "rejected": "No."}, "leaving fewer than"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, "non-empty list of messages"),
])
def test_bad_records_are_named_by_file_and_line(tmp_path, chatml_tokenizer, record, reason):
    with pytest.raises(DataError) as error:
        prepared(tmp_path, chatml_tokenizer, [PAIR, record], max_len=96)
    assert f"data.jsonl:2: " in str(error.value) and reason in str(error.value)
    data, _ = prepared(tmp_path, chatml_tokenizer, [PAIR, record], max_len=96, on_invalid="skip")
    assert len(data.train) == 1 and len(data.report.invalid) == 1
    assert data.report.invalid[0].location.endswith("data.jsonl:2")


def test_kto_file_with_one_label_is_reported(tmp_path, chatml_tokenizer):
    records = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "label": True} for i in range(3)]
    with pytest.raises(DataError, match=r"data.jsonl:1: every record of .* is labelled desirable"):
        prepared(tmp_path, chatml_tokenizer, records, task="kto")
    records[1]["label"] = False
    data, _ = prepared(tmp_path, chatml_tokenizer, records, task="kto")
    assert [e.desirable for e in data.train] == [True, False, True]


def test_llama_factory_parts_loss_weight_and_whole_conversations(tmp_path, chatml_tokenizer):
    record = {
        "chosen_messages": [
            {"role": "user", "content": [{"type": "text", "value": "What is 3 times 3?"}]},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "3 threes are 9."},
                                              {"type": "text", "value": "9."}]}],
        "rejected_messages": [
            {"role": "user", "content": [{"type": "text", "value": "What is 3 times 3?"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "6."}]}],
    }
    (parsed,) = read_records(write_jsonl(tmp_path / "lf.jsonl", [record]))
    assert parsed.kind == "preference" and parsed.messages[0].content == "What is 3 times 3?"
    assert parsed.chosen[0].content == "<think>\n3 threes are 9.\n</think>\n\n9."
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Old", "loss_weight": 0.0},
                         {"role": "user", "content": "Again"}, {"role": "assistant", "content": "New"}]}
    (parsed,) = read_records(write_jsonl(tmp_path / "lw.jsonl", [chat]))
    assert [m.trained for m in parsed.messages] == [False, False, False, True]
