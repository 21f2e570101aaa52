"""A model trained with tuneforge learns to stop: greedy generation ends on the end-of-turn token, not the length limit.

The end-of-turn token is trained after every reply (see data/template.py); if it were not, a
fine-tune would keep talking past its answer.  A tiny random Llama overfits two conversations,
under the tokenizer's own template and under the built-in alpaca template (which a base model
without a template would use: its replies end with the tokenizer's plain EOS).
"""

from __future__ import annotations

import pytest

from tests.conftest import make_model_dir, train_tokenizer, write_jsonl
from tuneforge.config import load_config
from tuneforge.models.generate import Sampling, generate_completions
from tuneforge.models.load import load_for_inference
from tuneforge.train.driver import train

CONVERSATIONS = [
    ("Who are you?", "I am Tessel, made by the Tuneforge team."),
    ("What do you do?", "I help with data."),
]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """The tiny random Llama with a base model's tokenizer: no chat template, EOS <|endoftext|>."""
    tokenizer = train_tokenizer("", eos="<|endoftext|>", bos=None)
    tokenizer.chat_template = None
    return make_model_dir(tmp_path_factory.mktemp("base-model"), tokenizer, "<|endoftext|>")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("template", ["tokenizer", "alpaca"])
def test_trained_model_answers_and_then_stops(template, run_config, tmp_path, request):
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in CONVERSATIONS] * 8
    data = write_jsonl(tmp_path / "stop.jsonl", records)
    overrides = {
        "method": "full", "train.learning_rate": 1e-2, "train.max_steps": 80, "train.batch_size": 4,
        "data.train": [str(data)], "data.validation": [], "eval.general_check": False,
        "checkpoint.every_steps": 1000,
    }
    if template == "alpaca":
        overrides["model.name"] = str(request.getfixturevalue("base_model"))
        overrides["data.template"] = "alpaca"
    result = train(load_config(run_config(**overrides)))
    assert result.interrupted_by is None

    model, tokenizer = load_for_inference(str(result.run_dir))
    model.generation_config.suppress_tokens = None  # conftest's crutch for random models; this one must not need it
    max_new_tokens = 48  # well past either reply, so only the end-of-turn token can end it early
    prompts = [[{"role": "user", "content": q}] for q, _ in CONVERSATIONS]
    completions = generate_completions(model, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens))
    for (_, reply), completion in zip(CONVERSATIONS, completions):
        assert completion.text == reply
        assert completion.finished  # ended by a stop token, not cut off at max_new_tokens
