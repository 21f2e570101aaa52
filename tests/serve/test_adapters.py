"""LoRA adapters served by name beside their base model, mixed in one batch, as vLLM serves LoRA modules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.serve.conftest import gated, running, wait_until
from tuneforge.errors import ModelError
from tuneforge.models.generate import render_prompt
from tuneforge.models.load import ModelInfo, load_causal_lm

QUESTION = [{"role": "user", "content": "What is 3 plus 3?"}]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A saved LoRA adapter with random (non-zero) weights, laid out like a run's final/ directory."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    base = load_causal_lm(base_dir, torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    ModelInfo(base_model=str(base_dir), method="lora").write(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model, root / "run" / "final", 1).parent, make_adapter(tiny_model, root / "second", 2)


@pytest.fixture(scope="module")
def served(adapters):
    from tuneforge.serve.served import load_served

    run, second = adapters
    return load_served(str(run), [("second", str(second))])


def greedy(model, tokenizer, max_tokens: int = 10) -> str:
    prompt = tokenizer.encode(render_prompt(tokenizer, QUESTION), add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)


@pytest.fixture(scope="module")
def expected(tiny_model, adapters):
    """Each served name's greedy reply, from separately loaded models."""
    from peft import PeftModel

    from tuneforge.models.load import load_tokenizer

    run, second = adapters
    tokenizer = load_tokenizer(tiny_model)
    replies = {str(tiny_model): greedy(load_causal_lm(tiny_model, torch.float32).eval(), tokenizer)}
    for name, directory in ((str(run), run / "final"), ("second", second)):
        model = PeftModel.from_pretrained(load_causal_lm(tiny_model, torch.float32), directory).eval()
        replies[name] = greedy(model, tokenizer)
    assert len(set(replies.values())) == 3  # the adapters change the answers, so the test can tell them apart
    return replies


def test_models_lists_the_base_and_every_adapter(served, tiny_model, adapters):
    with running(served) as live:
        cards = {m.id: m for m in live.client().models.list()}
    run, _ = adapters
    assert set(cards) == {str(tiny_model), str(run), "second"}
    assert cards[str(run)].parent == str(tiny_model) and cards["second"].parent == str(tiny_model)
    assert cards[str(tiny_model)].parent is None
    assert served.default == str(run)


def test_each_name_gets_its_own_weights_even_in_one_mixed_batch(served, expected):
    with running(served) as live:
        client = live.client()

        def ask(name):
            return client.chat.completions.create(model=name, messages=QUESTION, max_tokens=10,
                                                  temperature=0).choices[0].message.content

        alone = {name: ask(name) for name in expected}
        assert alone == expected
        together = {}
        steps = live.engine.stats.decode_steps
        with gated(live.engine) as gate:
            threads = [threading.Thread(target=lambda n=name: together.__setitem__(n, ask(n))) for name in expected]
            for thread in threads:
                thread.start()
            wait_until(lambda: live.state.in_flight == 3)
            gate.set()
            for thread in threads:
                thread.join(30)
        assert together == expected
        assert live.engine.stats.decode_steps - steps <= 10  # decoded together, not one after another


def test_adapter_flags_are_checked(tiny_model, adapters, tmp_path):
    from tuneforge.serve.served import load_served, parse_adapter_flag

    run, second = adapters
    assert parse_adapter_flag("support = runs/support") == ("support", "runs/support")
    for bad in ("support", "=path", "name="):
        with pytest.raises(ModelError, match="NAME=PATH"):
            parse_adapter_flag(bad)
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_served(str(tiny_model), [("full", str(tiny_model))])
    with pytest.raises(ModelError, match="no such directory"):
        load_served(str(tiny_model), [("gone", str(tmp_path / "missing"))])
    with pytest.raises(ModelError, match="already served"):
        load_served(str(run), [(str(tiny_model), str(second))])


def test_an_adapter_on_a_plain_base_model(tiny_model, adapters, expected):
    from tuneforge.serve.served import load_served

    _, second = adapters
    served = load_served(str(tiny_model), [("second", str(second))])
    assert served.default == str(tiny_model)
    with running(served) as live:
        client = live.client()
        for name in (str(tiny_model), "second"):
            reply = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=10, temperature=0)
            assert reply.choices[0].message.content == expected[name]
