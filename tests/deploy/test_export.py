"""`tuneforge export` on tiny runs: the merged model loaded by plain transformers answers as the adapter model does.

Two runs are trained once per module: a full fine-tune of the tiny random Llama that has learnt
to answer and stop (the "base"), and a LoRA run on top of it, whose adapter moves the weights
enough that a merge that went wrong would show.  A third, barely trained on the random model,
never ends its turn: its export must be refused.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import chat_records, make_model_dir, train_tokenizer, write_jsonl
from tuneforge.config import load_config
from tuneforge.deploy import parity
from tuneforge.deploy.commands import PARITY_FAILED_EXIT, add_export_parser, run_export
from tuneforge.deploy.export import ExportRequest, export
from tuneforge.errors import ConfigError, RunDirError
from tuneforge.models.generate import Sampling, generate_completions
from tuneforge.models.load import load_for_inference
from tuneforge.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
VALIDATION = chat_records(30)[24:]


def write_run(directory, model: str, method: str, data: dict | None = None, **train_settings):
    """Train a run on chat_records(24) with VALIDATION held out; `data` adds keys to the data section."""
    train_file = write_jsonl(directory / "train.jsonl", chat_records(24))
    validation = write_jsonl(directory / "validation.jsonl", VALIDATION)
    raw = {
        "model": {"name": model},
        "data": {"train": str(train_file), "validation": str(validation), **(data or {})},
        "method": method, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"batch_size": 8, "max_seq_length": 128, **train_settings},
        "eval": {"general_check": False}, "checkpoint": {"every_steps": 5}, "output_dir": str(directory / "run"),
    }
    (directory / "run.yaml").write_text(yaml.safe_dump(raw))
    return train(load_config(directory / "run.yaml"))


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory):
    """A full fine-tune that answers the validation prompts and then stops (80 steps, ~2 s)."""
    torch.set_num_threads(1)
    return write_run(tmp_path_factory.mktemp("full"), str(tiny_model), "full", learning_rate=1e-2, max_steps=80).run_dir


@pytest.fixture(scope="module")
def lora_run(full_run, tmp_path_factory):
    """A LoRA run on top of the full fine-tune: its adapter is far from zero, and the model still stops."""
    torch.set_num_threads(1)
    return write_run(tmp_path_factory.mktemp("lora"), str(full_run / "final"), "lora",
                     learning_rate=3e-3, max_steps=10).run_dir


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tuneforge")
    add_export_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["export", *argv])


def greedy(model, tokenizer, max_new_tokens: int = 48, **generate_kwargs) -> list[list[int]]:
    """Replies to the validation prompts, one at a time, as a user of plain transformers would ask."""
    replies = []
    for record in VALIDATION:
        inputs = tokenizer.apply_chat_template(record["messages"][:1], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, **generate_kwargs)
        replies.append(output[0, inputs["input_ids"].shape[1]:].tolist())
    return replies


def test_merged_export_loaded_by_plain_transformers_answers_as_the_adapter_model(lora_run, full_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert run_export(cli(str(lora_run), "--to", str(out), "--merge"), _console()) == 0
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", "parity.json"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".merged*"))  # no temporary directory left behind

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter_model, run_tokenizer = load_for_inference(str(lora_run), torch.device("cpu"), "float32")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The merge changed the weights (the adapter is not a no-op) ...
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(load_file(out / "model.safetensors")[name], load_file(full_run / "final" / "model.safetensors")[name])
    # ... and plain `generate`, told nothing about stop tokens, answers token for token as the adapter model
    # does under tuneforge's stop ids, and stops at the end of the turn.
    exported = greedy(merged, tokenizer)
    expected = greedy(adapter_model, run_tokenizer, eos_token_id=[im_end])
    assert exported == expected
    assert all(reply[-1] == im_end for reply in exported)
    tuneforge_replies = generate_completions(adapter_model, run_tokenizer, [r["messages"][:1] for r in VALIDATION],
                                             Sampling(max_new_tokens=48), batch_size=1)
    assert [tokenizer.decode(r, skip_special_tokens=True).strip() for r in exported] == [c.text for c in tuneforge_replies]

    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["mode"] == "merge" and report["dtype"] == "float32"
    assert 0 < report["max_abs_logit_diff"] <= report["atol"] == 1e-3
    assert len(report["prompts"]) == 6 and report["prompts_source"].startswith("data.validation")
    assert all(p["identical"] and p["stopped"] and p["exported_stopped"] for p in report["prompts"])
    assert "max |logit diff|" in capsys.readouterr().err


def test_model_card_records_base_data_config_and_eval(lora_run, full_run, tmp_path):
    out = tmp_path / "merged"
    result = export(ExportRequest(lora_run, out, "merge", limit=2), _console())
    card = (out / "README.md").read_text()
    assert result.directory == out
    manifest = json.loads((lora_run / "data_manifest.json").read_text())
    assert str(full_run / "final") in card  # the base model
    assert all(digest in card for digest in manifest["files"].values())  # the data hashes
    assert (lora_run / "config.yaml").read_text().strip() in card  # the resolved config
    summary = json.loads((lora_run / "eval" / "summary.json").read_text())
    assert "validation loss" in card and f"{summary['validation loss']['tuned']:.4g}" in card  # eval results
    assert "parity (merge, float32) on 2 golden prompts" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "vllm serve" in card


def test_adapter_export_loads_with_peft_on_the_base_it_names(lora_run, full_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    checkpoint = lora_run / "checkpoints" / "step-000005"  # a checkpoint exports as well as the run
    assert run_export(cli(str(checkpoint), "--to", str(out), "--adapter", "--limit", "3"), _console()) == 0
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json",
            "README.md", "parity.json", "tuneforge.json"} <= names
    assert "model.safetensors" not in names
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((full_run / "final").resolve())

    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    run_model, run_tokenizer = load_for_inference(str(checkpoint), torch.device("cpu"), "float32")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert greedy(model, tokenizer, eos_token_id=[im_end]) == greedy(run_model, run_tokenizer, eos_token_id=[im_end])
    assert json.loads((out / "parity.json").read_text())["max_abs_logit_diff"] == 0.0  # the same adapter, reloaded


def test_full_fine_tune_merges_to_its_own_weights_and_has_no_adapter(full_run, tmp_path):
    result = export(ExportRequest(full_run, tmp_path / "full", "merge", limit=3), _console())
    assert result.report.passed and result.report.max_abs_logit_diff == 0.0
    with pytest.raises(ConfigError, match="full fine-tune.*no adapter.*--merge"):
        export(ExportRequest(full_run, tmp_path / "adapter", "adapter"), _console())
    assert not (tmp_path / "adapter").exists()


def test_a_non_empty_directory_is_refused_unless_overwrite(lora_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty.*--overwrite"):
        export(ExportRequest(lora_run, out, "merge"), _console())
    with pytest.raises(RunDirError, match="holds the model being exported"):
        export(ExportRequest(lora_run, lora_run / "final", "merge", overwrite=True), _console())
    assert (out / "keep.txt").read_text() == "mine"
    assert export(ExportRequest(lora_run, out, "merge", overwrite=True, limit=2), _console()).directory == out
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_a_corrupted_merge_fails_the_check_and_leaves_the_directory_untouched(lora_run, tmp_path):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the export already there")

    def corrupt(directory):
        weights = load_file(directory / "model.safetensors")
        weights["model.layers.1.mlp.down_proj.weight"][0, :8] += 0.05
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})

    result = export(ExportRequest(lora_run, out, "merge", overwrite=True, limit=3), _console(), before_check=corrupt)
    assert result.directory is None and not result.report.passed
    assert any(reason.startswith("logits differ by up to") for reason in result.report.reasons)
    assert (out / "model.safetensors").read_bytes() == b"the export already there"
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert not list(tmp_path.glob(".previous*"))
    assert json.loads(result.report_path.read_text())["passed"] is False
    assert result.report_path == lora_run / "parity_failed.json"


def test_a_model_that_never_ends_its_turn_is_not_exported(tiny_model, tmp_path, capsys):
    run = write_run(tmp_path, str(tiny_model), "lora", learning_rate=1e-3, max_steps=1).run_dir
    out = tmp_path / "out"
    assert run_export(cli(str(run), "--to", str(out), "--merge", "--limit", "2", "--max-new-tokens", "12"),
                      _console()) == PARITY_FAILED_EXIT
    assert not out.exists()
    err = capsys.readouterr().err
    assert "did not end their turn within 12 new tokens" in err and "nothing was exported" in err


def test_golden_prompts_come_from_the_validation_split_or_a_prompts_file(lora_run, tmp_path):
    config = load_config(lora_run / "config.yaml").model_copy(deep=True)
    config.data.validation, config.data.val_split = [], 0.25
    _, tokenizer = load_for_inference(str(lora_run), torch.device("cpu"), "float32")
    prompts, source = parity.golden_prompts(config, tokenizer, None, limit=4)
    assert source == "the validation split (data.val_split=0.25)" and len(prompts) == 4
    for prompt in prompts:
        assert prompt.source.startswith("validation split row")
        assert prompt.text.startswith("<|im_start|>system") and prompt.text.endswith("<|im_start|>assistant\n")
        assert re.search(r"What is \d+ plus \d+\?", prompt.text)
        assert not re.search(r"\d+ plus \d+ is", prompt.text)  # the question, not its answer

    probes = write_jsonl(tmp_path / "golden.jsonl", [{"prompt": "What is 7 plus 7?"}, {"prompt": "Hi"}])
    prompts, source = parity.golden_prompts(config, tokenizer, probes, limit=8)
    assert source == str(probes) and [p.messages[-1]["content"] for p in prompts] == ["What is 7 plus 7?", "Hi"]
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_records(3))
    prompts, _ = parity.golden_prompts(None, tokenizer, chats, limit=2)
    assert [p.messages for p in prompts] == [tuple(r["messages"][:1]) for r in chat_records(2)]


def test_last_reply_start_finds_the_last_trained_run():
    ignore = parity.IGNORE
    assert parity.last_reply_start([ignore, ignore, 5, 6, ignore, ignore, 7, 8]) == 6
    assert parity.last_reply_start([ignore, 3]) == 1
    assert parity.last_reply_start([1, 2]) == 0


def test_cli_requires_one_of_merge_or_adapter(capsys):
    with pytest.raises(ConfigError, match="pass --merge or --adapter"):  # --format gguf needs neither
        run_export(cli("runs/x", "--to", "out"), _console())
    with pytest.raises(SystemExit):
        cli("runs/x", "--to", "out", "--merge", "--adapter")
    assert cli("runs/x", "--to", "out", "--adapter").mode == "adapter"


def _console():
    from rich.console import Console

    return Console(stderr=True)


def test_the_exported_generation_config_stops_at_the_trained_end_of_turn(tmp_path):
    """A base model whose EOS is <|endoftext|>, trained with the built-in ChatML template: its replies end with
    <|im_end|>, which the base's generation config does not know; the export's must."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = train_tokenizer("", eos="<|endoftext|>", bos=None)
    tokenizer.chat_template = None
    base = make_model_dir(tmp_path / "base", tokenizer, "<|endoftext|>")
    run = write_run(tmp_path, str(base), "full", {"template": "chatml"}, learning_rate=1e-2, max_steps=80).run_dir
    out = tmp_path / "out"
    assert export(ExportRequest(run, out, "merge", limit=3), _console()).directory == out

    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert GenerationConfig.from_pretrained(base).eos_token_id == endoftext
    assert {im_end, endoftext} <= set(GenerationConfig.from_pretrained(out).eos_token_id)
    replies = greedy(AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out))
    assert all(reply[-1] == im_end and len(reply) < 48 for reply in replies)


def test_a_run_whose_data_has_moved_still_exports_with_fallback_prompts(lora_run, tmp_path, capsys):
    import shutil

    moved = shutil.copytree(lora_run, tmp_path / "run")
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"]["validation"] = [str(tmp_path / "gone.jsonl")]
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    result = export(ExportRequest(moved, tmp_path / "out", "merge", limit=2, max_new_tokens=4), _console())
    assert result.report.prompts_source.endswith("general_check.jsonl") and len(result.report.prompts) == 2
    assert "gone.jsonl" in capsys.readouterr().err


def test_dtype_sets_the_merged_weights_dtype_and_the_tolerance(lora_run, tmp_path):
    seen = {}

    def inspect(directory):
        seen["config"] = json.loads((directory / "config.json").read_text())["dtype"]
        seen["weights"] = {t.dtype for t in load_file(directory / "model.safetensors").values()}

    result = export(ExportRequest(lora_run, tmp_path / "bf16", "merge", limit=2, dtype="bfloat16"), _console(),
                    before_check=inspect)
    assert seen == {"config": "bfloat16", "weights": {torch.bfloat16}}
    assert result.report.dtype == "bfloat16" and result.report.atol == parity.ATOL["bfloat16"]
    assert result.report.max_abs_logit_diff > 1e-3  # rounding to bfloat16 shows, unlike a float32 merge
    with pytest.raises(ConfigError, match="--dtype bfloat16 applies to --merge"):
        export(ExportRequest(lora_run, tmp_path / "adapter", "adapter", dtype="bfloat16"), _console())
