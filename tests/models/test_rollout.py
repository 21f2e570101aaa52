"""GRPO rollouts through the batched decoding core: greedy equals `generate`, length limit, end of turn, seeds,
LoRA's current adapter, the model's mode given back, and the packed frozen base giving the same tokens."""

from __future__ import annotations

import functools

import pytest
import torch

from tuneforge.models.generate import Sampling, stop_token_ids
from tuneforge.models.packed import PackedLinear, can_pack
from tuneforge.models.packed_base import pack_frozen_base
from tuneforge.models.rollout import sample_token_groups

PROMPTS = ["hello there", "What is 2 plus 2? Tell me", "a", "def f(x):\n    return"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from tuneforge.models.load import load_for_inference

    return load_for_inference(str(tiny_model))


def generate_greedy(model, tokenizer, prompt: list[int], max_new_tokens: int) -> list[int]:
    stops = stop_token_ids(model, tokenizer)
    output = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    tokens = output[0, len(prompt):].tolist()
    return next((tokens[: i + 1] for i, t in enumerate(tokens) if t in stops), tokens)


def stop_after(model, tokenizer, monkeypatch, multiple: int) -> None:
    """Make the end of turn the most likely token after any token whose id is a multiple of `multiple`,
    in `generate` as in the rollouts: answers of different lengths, so rows leave at different steps."""
    stop, real = stop_token_ids(model, tokenizer)[0], model.forward

    @functools.wraps(real)
    def forward(*args, **kwargs):
        output = real(*args, **kwargs)
        last = kwargs["input_ids"][:, -output.logits.shape[1]:]
        output.logits[..., stop] += 1e4 * (last % multiple == 0)
        return output

    monkeypatch.setattr(model, "forward", forward)


@pytest.mark.parametrize("batch_size, multiple", [(64, 0), (64, 4), (5, 4)])  # 5: two prompts, then others join
def test_greedy_rollouts_equal_generate_token_for_token(loaded, monkeypatch, batch_size, multiple):
    model, tokenizer = loaded
    if multiple:
        stop_after(model, tokenizer, monkeypatch, multiple)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    groups = sample_token_groups(model, tokenizer, prompts, 2, Sampling(max_new_tokens=24, temperature=0.0),
                                 batch_size)
    for prompt, group in zip(prompts, groups):
        expected = generate_greedy(model, tokenizer, prompt, 24)
        assert [r.completion_ids for r in group] == [expected, expected]
        assert all(r.prompt_ids == prompt for r in group)


def test_max_new_tokens_and_the_end_of_turn_end_a_row(loaded, monkeypatch):
    model, tokenizer = loaded
    stops = stop_token_ids(model, tokenizer)
    prompt = [tokenizer.encode("hello there")]
    [[cut]] = sample_token_groups(model, tokenizer, prompt, 1, Sampling(max_new_tokens=3, temperature=0.0))
    assert len(cut.completion_ids) <= 3 and (cut.finished == (cut.completion_ids[-1] in stops))
    stop_after(model, tokenizer, monkeypatch, 1)  # the end of turn is always the most likely: one-token answers
    [group] = sample_token_groups(model, tokenizer, prompt, 3, Sampling(max_new_tokens=8, temperature=1.0))
    assert [r.completion_ids for r in group] == [[stops[0]]] * 3 and all(r.finished for r in group)


def test_sampled_groups_repeat_under_a_seed_and_differ_within_a_group(loaded):
    model, tokenizer = loaded
    prompts = [tokenizer.encode(p) for p in PROMPTS[:2]]
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        groups = sample_token_groups(model, tokenizer, prompts, 4, Sampling(max_new_tokens=10, temperature=1.0,
                                                                            top_p=0.9))
        runs.append([[r.completion_ids for r in g] for g in groups])
    assert runs[0] == runs[1]
    assert all(len({tuple(ids) for ids in group}) > 1 for group in runs[0])
    assert all(len(ids) <= 10 for group in runs[0] for ids in group)


def test_with_lora_the_current_adapter_generates_and_the_train_mode_comes_back(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # an adapter that changes the answers
    model.train()
    prompt = [tokenizer.encode("hello there")]
    greedy = Sampling(max_new_tokens=12, temperature=0.0)
    [[adapted]] = sample_token_groups(model, tokenizer, prompt, 1, greedy)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert adapted.completion_ids == generate_greedy(model, tokenizer, prompt[0], 12)
    with model.disable_adapter():
        assert adapted.completion_ids != generate_greedy(model, tokenizer, prompt[0], 12)




@pytest.mark.skipif(not can_pack(torch.device("cpu")), reason="this CPU has no native bf16: nothing is packed")
def test_a_packed_frozen_base_gives_the_same_rollouts_and_is_swapped_back(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    packed = pack_frozen_base(model)
    assert len(packed.swaps) == 2 * 3 + 1  # 2 layers x 3 adapted linears, and the output layer
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    greedy = Sampling(max_new_tokens=16, temperature=0.0)
    plain = sample_token_groups(model, tokenizer, prompts, 2, greedy)
    with packed.swapped():
        assert isinstance(base.lm_head, PackedLinear)
        assert sample_token_groups(model, tokenizer, prompts, 2, greedy) == plain
    assert type(base.lm_head) is torch.nn.Linear and all(s.parent.base_layer is s.original for s in packed.swaps[:-1])
    assert pack_frozen_base(base) is None  # no adapter: the base trains, nothing is packed
