"""Shared fixtures: a tokenizer trained here on the project's own text and tiny random Llama models.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in a second on three example folders, the models are
random 2-layer Llamas with hidden size 64, and TUNEFORGE_HOME points at a temporary cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# huggingface_hub reads HF_HUB_OFFLINE once, when first imported: set before any test module imports it, so
# no test can reach the hub (the per-test fixture below keeps it set for subprocesses).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a test assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]


# The example folders the test tokenizer learns from. Fixed, so that neither a source edit nor a new
# example folder changes the tokenizer, and with it every tiny model's data and losses
# (tests/train/test_pinned_losses.py pins them).
CORPUS_FOLDERS = ("beekeeping", "identity", "intents")


def corpus() -> list[str]:
    return [line for folder in CORPUS_FOLDERS for path in sorted((ROOT / "examples" / folder).rglob("*.jsonl"))
            for line in path.read_text().splitlines()]


def train_tokenizer(template: str, eos: str, bos: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=eos, bos_token=bos)
    tokenizer.chat_template = template
    return tokenizer


def make_model_dir(path: Path, tokenizer, eos: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos_id
    # A random model tends to emit template tokens or newlines, which decode to nothing once
    # stripped; suppress them so its replies are visible text (replay drops empty answers).
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    model.generation_config.suppress_tokens = sorted(set(blank) - {eos_id})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path_factory.getbasetemp() / "tuneforge-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return train_tokenizer(CHATML, eos="<|im_end|>", bos=None)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    return train_tokenizer(LLAMA3, eos="<|eot_id|>", bos="<|begin_of_text|>")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, chatml_tokenizer) -> Path:
    """A saved random 2-layer Llama with the ChatML tokenizer; reference it as a local directory."""
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"), chatml_tokenizer, "<|im_end|>")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat_records(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
        for i in range(n)
    ]


@pytest.fixture
def run_config(tmp_path, tiny_model):
    """Write a tiny-run YAML file; keyword overrides are dotted keys, e.g. **{"train.max_steps": 4}."""

    def write(**overrides) -> Path:
        train = write_jsonl(tmp_path / "train.jsonl", chat_records(24))
        validation = write_jsonl(tmp_path / "validation.jsonl", chat_records(30)[24:])
        raw = {
            "model": {"name": str(tiny_model)},
            "data": {"train": str(train), "validation": str(validation)},
            "method": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "train": {"learning_rate": 1e-2, "epochs": 2, "batch_size": 4, "max_seq_length": 128, "log_every": 1},
            "checkpoint": {"every_steps": 3},
            "output_dir": str(tmp_path / "run"),
        }
        apply_overrides(raw, overrides)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """Set dotted keys (`train.max_steps`) in a raw run file (None writes a YAML null)."""
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


@pytest.fixture
def one_thread():
    """A 64-wide model gains nothing from threads, and on a busy 2-core machine they contend (10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_pieces(tokenizer, tokens) -> list[str]:
    """Decoded runs of consecutive trained tokens (special tokens included); labels must equal the tokens."""
    from tuneforge.data.template import IGNORE

    pieces, run = [], []
    for token, label in [*zip(tokens.input_ids, tokens.labels), (None, IGNORE)]:
        if label != IGNORE:
            assert label == token
            run.append(token)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    return pieces
