"""The data pipeline end to end: validate, clean, split, tokenize, cache; and its CLI commands."""

import json

import numpy as np
import pytest

from tests.conftest import chat_records, write_jsonl
from tuneforge.cli import main
from tuneforge.config import DataConfig
from tuneforge.data.prepare import prepare
from tuneforge.data.splits import split_rows
from tuneforge.data.template import IGNORE
from tuneforge.errors import DataError

GOOD = chat_records(10)


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))


def stop_ids(tokenizer):
    return [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def run(tokenizer, max_len=256, seed=0, **data):
    return prepare(DataConfig(**data), tokenizer, stop_ids(tokenizer), max_len, seed)


def messy_file(path):
    """10 good records, then line 3 bad JSON, line 7 an unknown role, a duplicate and an over-long record."""
    lines = [json.dumps(r) for r in GOOD]
    lines.insert(2, "{broken")
    lines.insert(6, json.dumps({"messages": [{"role": "robot", "content": "beep"}]}))
    duplicate = {"messages": [{"role": "user", "content": "WHAT is 4   plus 4?"},
                              {"role": "assistant", "content": "4 plus 4 is 8."}]}
    long = {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(["one"] * 400)}]}
    lines += [json.dumps(duplicate), json.dumps(long)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_error_policy_names_every_bad_line_and_writes_nothing(tmp_path, chatml_tokenizer):
    path = messy_file(tmp_path / "train.jsonl")
    with pytest.raises(DataError) as error:
        run(chatml_tokenizer, train=[str(path)])
    message = str(error.value)
    assert "3 invalid record(s)" in message
    assert f"{path}:3: invalid JSON" in message
    assert f"{path}:7: messages[0].role: unknown role 'robot'" in message
    assert f"{path}:14: " in message and "longer than train.max_seq_length=256" in message
    assert "on_invalid: skip" in message
    datasets = tmp_path / "home" / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir())


def test_skip_policy_reports_exactly_what_it_dropped(tmp_path, chatml_tokenizer):
    path = messy_file(tmp_path / "train.jsonl")
    prepared = run(chatml_tokenizer, train=[str(path)], on_invalid="skip")
    report = json.loads((prepared.directory / "report.json").read_text())
    assert [p["location"] for p in report["invalid"]] == [f"{path}:3", f"{path}:7", f"{path}:14"]
    assert [p["location"] for p in report["dropped"]] == [f"{path}:13"]
    assert report["dropped"][0]["reason"] == "exact duplicate of an earlier record"
    assert report["cleaning"]["exact_duplicates"] == 1
    assert report["invalid_by_reason"] == {"invalid JSON: Expecting property name enclosed in double quotes": 1,
                                           "unknown role …": 1, "… tokens, longer than train.max_seq_length=…": 1}
    assert prepared.manifest.train_records == 10 == len(prepared.train)
    assert prepared.manifest.invalid_records == 3 and prepared.manifest.dropped_records == 1


def test_second_prepare_is_a_cache_hit_and_a_changed_file_is_not(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", GOOD)
    first = run(chatml_tokenizer, train=[str(path)])
    second = run(chatml_tokenizer, train=[str(path)])
    assert not first.from_cache and second.from_cache and first.directory == second.directory
    assert [e.input_ids for e in first.train] == [e.input_ids for e in second.train]
    assert first.train[0].labels == second.train[0].labels
    write_jsonl(path, GOOD[:9])
    third = run(chatml_tokenizer, train=[str(path)])
    assert not third.from_cache and third.directory != first.directory and len(third.train) == 9
    assert run(chatml_tokenizer, max_len=300, train=[str(path)]).directory != third.directory


def test_stored_examples_keep_the_assistant_only_mask(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", GOOD[:3])
    example = run(chatml_tokenizer, train=[str(path)]).train[0]
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert chatml_tokenizer.decode(trained).endswith("<|im_end|>")
    assert "plus" in chatml_tokenizer.decode(trained) and "user" not in chatml_tokenizer.decode(trained)


def test_val_and_test_splits_are_deterministic_and_disjoint(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", chat_records(40))
    prepared = run(chatml_tokenizer, seed=3, train=[str(path)], val_split=0.1, test_split=0.2)
    rows = [set(s.rows.tolist()) for s in (prepared.train, prepared.validation, prepared.test)]
    assert [len(r) for r in rows] == [28, 4, 8]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    again = run(chatml_tokenizer, seed=3, train=[str(path)], val_split=0.1, test_split=0.2)
    assert again.from_cache and set(again.validation.rows.tolist()) == rows[1]


def test_stratified_split_keeps_each_class_share():
    labels = ["spam"] * 20 + ["ham"] * 80
    split = split_rows(np.arange(100), 0.1, 0.1, seed=1, labels=labels)
    for rows in (split.validation, split.test):
        assert sorted(labels[i] for i in rows) == ["ham"] * 8 + ["spam"] * 2
    assert len(split.train) == 80
    assert np.array_equal(split.validation, split_rows(np.arange(100), 0.1, 0.1, seed=1, labels=labels).validation)


def test_contamination_is_reported_and_removed_when_asked(tmp_path, chatml_tokenizer):
    question = "Which river flows through the old town of Lumen and past the market square every spring?"
    train = write_jsonl(tmp_path / "train.jsonl", GOOD + [{"messages": [
        {"role": "user", "content": f"Quick one. {question}"}, {"role": "assistant", "content": "The Vell."}]}])
    validation = write_jsonl(tmp_path / "validation.jsonl", [{"messages": [
        {"role": "user", "content": question}, {"role": "assistant", "content": "The Vell river."}]}])
    reported = run(chatml_tokenizer, train=[str(train)], validation=[str(validation)])
    report = json.loads((reported.directory / "report.json").read_text())
    assert report["contamination"] == [{"eval": f"{validation}:1", "train": f"{train}:11", "shared": 1.0}]
    assert len(reported.train) == 11
    removed = run(chatml_tokenizer, train=[str(train)], validation=[str(validation)], clean={"contamination": "remove"})
    assert len(removed.train) == 10


def test_pii_is_redacted_before_tokenizing(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": [
        {"role": "user", "content": "Mail me at ada.lovelace@example.org please"},
        {"role": "assistant", "content": "I will write to <EMAIL> now."}]}])
    prepared = run(chatml_tokenizer, train=[str(path)], clean={"redact_pii": True})
    text = chatml_tokenizer.decode(prepared.train[0].input_ids)
    assert "ada.lovelace" not in text and "Mail me at <EMAIL> please" in text
    assert prepared.manifest.cleaning["pii_email"] == 1


def test_text_records_train_every_token_and_end_with_eos(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "The tide comes in twice a day."}])
    example = run(chatml_tokenizer, train=[str(path)]).train[0]
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == chatml_tokenizer.eos_token_id


def test_preference_data_cannot_be_trained_and_says_so(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    with pytest.raises(DataError, match=rf"{path}:1: a preference record; training uses chat, text and classification records"):
        run(chatml_tokenizer, train=[str(path)])


def test_data_prepare_command_then_cache_hit(run_config, capsys):
    config = run_config()
    assert main(["data", "prepare", str(config)]) == 0
    assert "prepared:" in capsys.readouterr().err
    assert main(["data", "prepare", str(config)]) == 0
    output = capsys.readouterr().err
    assert "cached:" in output and "24 train / 6 validation / 0 test" in output


def test_data_inspect_command_prints_problems_and_writes_html(tmp_path, tiny_model, capsys):
    path = messy_file(tmp_path / "train.jsonl")
    report = tmp_path / "report"
    code = main(["data", "inspect", str(path), "--model", str(tiny_model), "--max-seq-length", "256",
                 "--report", str(report)])
    output = capsys.readouterr().out
    assert code == 1  # problems found
    assert "chat" in output and "exact duplicates" in output
    assert f"{path}:3" in output and f"{path}:7" in output
    page = (report / "index.html").read_text()
    assert "lengths_0.png" in page and (report / "lengths_0.png").stat().st_size > 1000
    assert f"{path}:14" in page


def test_training_with_packing_uses_fewer_rows(run_config):
    from tuneforge.config import load_config
    from tuneforge.train.driver import train

    packed = train(load_config(run_config(**{"data.packing": True, "output_dir": str(run_config().parent / "packed")})))
    plain = train(load_config(run_config(**{"output_dir": str(run_config().parent / "plain")})))
    assert packed.total_steps < plain.total_steps
    losses = [json.loads(line) for line in (packed.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [m["train_loss"] for m in losses if "train_loss" in m]
    assert train_losses[-1] < train_losses[0]


def test_classification_trains_the_label_as_the_reply_and_splits_stratified(tmp_path, chatml_tokenizer):
    records = [{"text": f"Message number {i} about the weather", "label": "spam" if i % 5 == 0 else "ham"}
               for i in range(50)]
    path = write_jsonl(tmp_path / "labels.jsonl", records)
    prepared = run(chatml_tokenizer, train=[str(path)], val_split=0.2)
    labels = []
    for example in prepared.validation:
        trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
        labels.append(chatml_tokenizer.decode(trained).removesuffix("<|im_end|>"))
    assert sorted(labels) == ["ham"] * 8 + ["spam"] * 2
    assert len(prepared.train) == 40
