"""The chunked loss equals the plain one, in value and in gradients, and trains the same."""

import pytest
import torch

from tuneforge.data.template import IGNORE
from tuneforge.models import token_loss as loss_module
from tuneforge.train.loss import loss_sum


@pytest.fixture
def model_and_batch():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).train()
    input_ids = torch.randint(0, 500, (3, 40))
    labels = input_ids.clone()
    labels[:, :15] = IGNORE  # a prompt
    labels[2, 30:] = IGNORE  # padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 30:] = 0
    return model, {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fused", [True, False], ids=["fused-head", "checkpointed-head"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_loss_and_gradients_equal_the_plain_path(model_and_batch, chunk, fused, monkeypatch):
    """Both chunked paths: gradients computed in the forward for a plain Linear head, and the head module
    re-run under checkpointing for any other head (quantized, adapted, sharded)."""
    model, batch = model_and_batch
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", chunk)  # 7: many chunks, a short last one
    assert loss_module.plain_linear(model.get_output_embeddings())
    if not fused:
        monkeypatch.setattr(loss_module, "plain_linear", lambda head: False)
    plain, _ = loss_sum(model, batch, chunked=False)
    plain.backward()
    expected = gradients(model)
    model.zero_grad()
    chunked, _ = loss_sum(model, batch, chunked=True)
    chunked.backward()
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    got = gradients(model)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_autocast_the_fused_head_equals_the_checkpointed_one(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    results = []
    for fused in (True, False):
        monkeypatch.setattr(loss_module, "plain_linear", lambda head, fused=fused: fused)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value, _ = loss_sum(model, batch, chunked=True)
        (value * 0.01).backward()  # a scaled loss, as the loop divides by the trained tokens
        results.append((value.item(), gradients(model)))
    (fused_value, fused_grads), (value, grads) = results
    assert fused_value == pytest.approx(value, rel=1e-3)
    for name in grads:
        assert fused_grads[name].dtype == grads[name].dtype
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=0, atol=2e-2 * grads[name].abs().max().item(),
                                   msg=name)


def test_a_batch_with_nothing_trained_gives_zero(model_and_batch):
    model, batch = model_and_batch
    batch = {**batch, "labels": torch.full_like(batch["labels"], IGNORE)}
    value, _ = loss_sum(model, batch, chunked=True)
    value.backward()  # a micro-batch with nothing trained still joins the backward pass
    assert value.item() == 0.0


def test_training_with_gradient_checkpointing_and_plain_loss_runs(run_config):
    from tuneforge.config import load_config
    from tuneforge.train.driver import train

    result = train(load_config(run_config(**{"train.gradient_checkpointing": True, "train.chunked_loss": False,
                                             "train.max_steps": 3, "eval.general_check": False})))
    assert result.state.step == 3 and result.interrupted_by is None
