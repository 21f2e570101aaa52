"""One-token decode attention (models/decode_attention.py) against transformers' SDPA attention."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.models.batched_decode import Batch, BatchedDecoder
from tuneforge.models.decode_attention import NAME, use_for_decoding


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneforge.models.load import load_for_inference

    return load_for_inference(str(tiny_model))


def decode_logits(model, tokenizer, prompts: list[str], steps: int) -> list[torch.Tensor]:
    """Each decode step's logits for left-padded rows fed the same tokens (the argmax of the SDPA run)."""
    decoder = BatchedDecoder(model, tokenizer.pad_token_id)
    encoded = [tokenizer.encode(p) for p in prompts]
    out = []
    with torch.inference_mode():
        cache, mask, logits = decoder.prefill(encoded, [1] * len(encoded), None)
        batch = Batch(list(range(len(encoded))), cache, mask, torch.arange(len(encoded)) + 5)
        for step in range(steps):
            logits = decoder.decode(batch, None)
            out.append(logits.float())
            batch.pending = torch.arange(len(encoded)) + 7 + step  # fixed tokens: both runs see the same inputs
    return out


def test_decode_steps_match_sdpa_for_padded_rows(tiny):
    model, tokenizer = tiny
    model.eval()
    switched = copy.deepcopy(model)
    assert use_for_decoding(switched) and switched.config._attn_implementation == NAME
    prompts = ["hello there, how are you today", "a", "What is 2 plus 2? Tell me quickly please"]  # different padding
    expected, got = decode_logits(model, tokenizer, prompts, 6), decode_logits(switched, tokenizer, prompts, 6)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-4, rtol=1e-4)


def test_prefill_and_training_keep_sdpa(tiny):
    model, tokenizer = tiny
    switched = copy.deepcopy(model)
    use_for_decoding(switched)
    ids = torch.tensor([tokenizer.encode("hello there, how are you")])
    with torch.inference_mode():
        assert torch.equal(switched(input_ids=ids).logits, model(input_ids=ids).logits)  # 5 query tokens: SDPA itself


def test_a_model_not_on_sdpa_is_left_alone(tiny):
    model, _ = tiny
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert not use_for_decoding(eager) and eager.config._attn_implementation == "eager"
