"""bf16 decoding with packed linears: the packing changes no number, fp32 is left alone, LoRA keeps working;
int8 decoding multiplies by the rounded weights it keeps, within half a step of each weight."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.models.decode_attention import use_for_decoding
from tuneforge.models.packed import Int8Linear, PackedLinear, can_pack, convert_linears, for_decoding, pack_linears

needs_bf16 = pytest.mark.skipif(not can_pack(torch.device("cpu")),
                                reason="this CPU has no native bf16 (AVX512-BF16 or AMX), so nothing is packed")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneforge.models.load import load_for_inference

    return load_for_inference(str(tiny_model))


@needs_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_the_bf16_linear_bit_for_bit(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for shape in [(1, 96), (8, 96), (37, 96), (3, 5, 96), (2, 1, 96)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        assert torch.equal(packed(x), linear(x)), shape


def test_float32_decoding_leaves_the_model_untouched(tiny):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert for_decoding(model, "float32") is model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m) is not PackedLinear for m in model.modules())


def test_an_unknown_decoding_dtype_is_refused(tiny):
    with pytest.raises(ConfigError, match="float16.*float32, bfloat16"):
        for_decoding(tiny[0], "float16")


@needs_bf16
def test_packed_model_answers_as_the_plain_bf16_model(tiny):
    """Greedy replies, batched and alone, equal those of the same model in bf16 without packing."""
    model, tokenizer = tiny
    plain = copy.deepcopy(model).to(torch.bfloat16)
    use_for_decoding(plain)  # the same one-token attention, so only the packing differs
    packed = for_decoding(copy.deepcopy(model), "bfloat16")
    assert sum(type(m) is PackedLinear for m in packed.modules()) == 2 * 7 + 1  # 2 layers x 7, and the LM head
    tokenizer.padding_side = "left"
    batch = tokenizer(["hello there", "What is 2 plus 2? Tell me", "a"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        assert torch.equal(packed.generate(**batch, **kwargs), plain.generate(**batch, **kwargs))
        logits = packed(**batch).logits
        assert torch.equal(logits, plain(**batch).logits)


@needs_bf16
def test_lora_layers_get_a_packed_base_and_keep_their_adapters(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    torch.manual_seed(1)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    plain = copy.deepcopy(lora).to(torch.bfloat16).eval()
    packed = copy.deepcopy(lora).to(torch.bfloat16).eval()
    pack_linears(packed)
    q_proj = packed.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer) is PackedLinear and type(q_proj.lora_A["default"]) is nn.Linear
    ids = torch.tensor([tokenizer.encode("hello there, how are you")])
    with torch.inference_mode():
        assert torch.equal(packed(input_ids=ids).logits, plain(input_ids=ids).logits)
        with packed.disable_adapter(), plain.disable_adapter():
            assert torch.equal(packed(input_ids=ids).logits, plain(input_ids=ids).logits)


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_multiplies_by_its_rounded_weights(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    quantized = Int8Linear(linear)
    scale = quantized.scale.float()
    restored = quantized.quantized.float() * scale[:, None]
    # each weight within half a step of the (bf16) scale it is multiplied by, the largest of a row ~127 steps
    assert ((restored - linear.weight).abs() <= scale[:, None] * 0.5 + 1e-7).all()
    assert (quantized.quantized.abs().amax(dim=1) >= 126).all()
    for shape in [(1, 96), (8, 96), (3, 5, 96)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        expected = x.float() @ restored.T + (linear.bias.detach() if bias else 0)
        got = quantized(x)
        assert got.dtype == torch.bfloat16 and got.shape == (*shape[:-1], 160)
        torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.02)


def test_int8_decoding_stays_close_to_float32(tiny):
    model, tokenizer = tiny
    converted = for_decoding(copy.deepcopy(model), "int8")
    assert sum(type(m) is Int8Linear for m in converted.modules()) == 2 * 7 + 1  # 2 layers x 7, and the LM head
    assert all(p.dtype == torch.bfloat16 for p in converted.parameters())
    ids = torch.tensor([tokenizer.encode("hello there, how are you")])
    with torch.inference_mode():
        exact, approximate = model(input_ids=ids).logits, converted(input_ids=ids).logits.float()
    assert (approximate - exact).abs().max() < 0.05 * exact.abs().max()


def test_int8_lora_layers_keep_their_adapters(tiny):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert convert_linears(lora, Int8Linear, torch.float32) == 2 * 7 + 1
    q_proj = lora.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer) is Int8Linear and type(q_proj.lora_A["default"]) is nn.Linear


def test_int8_decoding_is_refused_off_the_cpu():
    on_meta = nn.Sequential(nn.Linear(4, 4, device="meta"))
    with pytest.raises(ConfigError, match="int8 decodes on a CPU.*meta"):
        for_decoding(on_meta, "int8")
