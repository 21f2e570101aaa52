"""Packing: bins, the packed batch's layout, and packed losses equal to running each example alone."""

from __future__ import annotations

import random
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data.batching import collate
from tuneforge.data.packing import collate_packed, pack
from tuneforge.data.template import IGNORE, TokenizedExample
from tuneforge.models.token_loss import model_inputs
from tuneforge.train.loss import loss_sum

VOCAB = 97
LENGTHS = [9, 5, 7, 3, 6]  # packed into 16 tokens: [[0, 2], [4, 1, 3]], the second row padded by 2


def tiny_llama(attn_implementation: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn_implementation,
    )
    model = LlamaForCausalLM(config).eval()
    assert model.config._attn_implementation == attn_implementation
    return model


def examples(lengths: list[int], replay: bool = False) -> list[TokenizedExample]:
    """Random tokens; every token but the first two is trained, so boundaries sit next to trained tokens."""
    generator = torch.Generator().manual_seed(1)
    result = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=generator).tolist()
        result.append(TokenizedExample(ids, [IGNORE, IGNORE] + ids[2:], replay))
    return result


def packed_batch(items: list[TokenizedExample], max_len: int = 16) -> tuple[list[int], dict[str, torch.Tensor]]:
    bins = pack([len(e.input_ids) for e in items], max_len, [e.replay for e in items])
    order = [i for b in bins for i in b]
    return order, collate_packed([[items[i] for i in b] for b in bins], pad_id=0)


def token_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every trained target, row by row, in position order."""
    logits = model(**model_inputs(batch)).logits
    assert torch.isfinite(logits).all()
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none")
    return losses[targets != IGNORE]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_packed_losses_equal_each_example_run_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    items = examples(LENGTHS)
    order, batch = packed_batch(items)
    assert batch["input_ids"].shape == (2, 16) and batch["tokens"].tolist() == [16, 14]

    packed = token_losses(model, batch)
    alone = torch.cat([token_losses(model, collate([items[i]], pad_id=0)) for i in order])
    assert packed.shape == alone.shape == (sum(n - 2 for n in LENGTHS),)
    difference = (packed - alone).abs().max().item()
    print(f"{attn_implementation}: max per-token loss difference packed vs alone = {difference:.2e}")
    assert difference < 1e-5

    packed_sum, _ = loss_sum(model, batch)
    alone_sum = sum(loss_sum(model, collate([item], pad_id=0))[0] for item in items)
    assert packed_sum.item() == pytest.approx(alone_sum.item(), rel=1e-6, abs=1e-5)

    # Control: the same rows with only a padding mask and restarting positions leak across
    # examples, so the comparison above is sensitive to what the mask does.
    leaky = dict(batch, attention_mask=(torch.arange(16)[None] < batch["tokens"][:, None]).long())
    assert (token_losses(model, leaky) - alone).abs().max().item() > 1e-3


@torch.no_grad()
def test_packed_kl_to_base_equals_the_sum_over_examples_alone():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama("sdpa"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.5)
    model.eval()
    items = examples(LENGTHS, replay=True)
    _, batch = packed_batch(items)
    assert batch["replay"].all()
    _, packed_kl = loss_sum(model, batch, kl_weight=1.0, adapter_model=model)
    alone_kl = sum(loss_sum(model, collate([i], pad_id=0), kl_weight=1.0, adapter_model=model)[1] for i in items)
    assert packed_kl.item() > 1e-3
    assert packed_kl.item() == pytest.approx(alone_kl.item(), rel=1e-5)


class RecordingModel:
    """Stands in for a model and its PEFT wrapper, remembering the keyword arguments of each call."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(logits=torch.zeros(*kwargs["input_ids"].shape, VOCAB))

    @contextmanager
    def disable_adapter(self):
        yield


def test_loss_passes_position_ids_only_when_the_batch_has_them():
    model = RecordingModel()
    _, batch = packed_batch(examples(LENGTHS, replay=True))
    loss_sum(model, batch, kl_weight=1.0, adapter_model=model)
    assert len(model.calls) == 2  # the tuned forward and the base forward for KL
    for call in model.calls:
        assert set(call) == {"input_ids", "attention_mask", "position_ids"}
        assert torch.equal(call["position_ids"], batch["position_ids"])
        assert call["attention_mask"].shape == (2, 1, 16, 16)

    model = RecordingModel()
    loss_sum(model, collate(examples(LENGTHS), pad_id=0))
    assert set(model.calls[0]) == {"input_ids", "attention_mask"}


def test_pack_is_first_fit_decreasing_with_ties_by_index():
    assert pack(LENGTHS, 16) == [[0, 2], [4, 1, 3]]
    assert pack([4, 4, 4, 4, 2], 8) == [[0, 1], [2, 3], [4]]
    assert pack([3, 8, 5, 2], 8) == [[1], [2, 0], [3]]  # the 2 goes to the first bin with room
    assert pack([], 8) == []


def test_pack_bins_respect_max_len_and_hold_every_index_once():
    rng = random.Random(0)
    for max_len in (1, 7, 64, 300):
        lengths = [rng.randint(1, max_len) for _ in range(200)]
        bins = pack(lengths, max_len)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= max_len for b in bins)
        assert pack(lengths, max_len) == bins
        # first fit: no later bin's first example would have fitted in an earlier bin
        for later, b in enumerate(bins):
            for earlier in bins[:later]:
                assert sum(lengths[i] for i in earlier) + lengths[b[0]] > max_len


def test_pack_never_mixes_replay_and_task_examples():
    assert pack([5, 5], 10, [False, True]) == [[0], [1]]
    assert pack([5, 5], 10) == [[0, 1]]
    rng = random.Random(1)
    lengths = [rng.randint(1, 30) for _ in range(100)]
    replay = [rng.random() < 0.3 for _ in range(100)]
    bins = pack(lengths, 64, replay)
    assert sorted(i for b in bins for i in b) == list(range(100))
    assert all(len({replay[i] for i in b}) == 1 for b in bins)


def test_pack_rejects_too_long_and_empty_examples():
    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        pack([3, 9], 8)
    with pytest.raises(ValueError, match="example 0 is empty"):
        pack([0, 3], 8)
    with pytest.raises(ValueError, match="replay flags"):
        pack([3, 3], 8, [True])


def test_collate_packed_ignores_boundaries_and_restarts_positions():
    first = TokenizedExample([11, 12, 13], [IGNORE, 12, 13])
    second = TokenizedExample([21, 22, 23, 24], [21, 22, 23, 24])
    lone = TokenizedExample([31, 32], [31, 32])
    batch = collate_packed([[first, second], [lone]], pad_id=0)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 23, 24], [31, 32, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE, 12, 13, IGNORE, 22, 23, 24],  # 21 would be predicted from 13: not trained
        [IGNORE, 32] + [IGNORE] * 5,
    ]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert batch["position_ids"][1, :2].tolist() == [0, 1]
    assert batch["tokens"].tolist() == [7, 2]
    assert batch["replay"].tolist() == [False, False]
    wide = collate_packed([[first, second], [lone]], pad_id=0, multiple=8)  # one padding column more
    assert wide["input_ids"].shape == (2, 8) and wide["tokens"].tolist() == [7, 2]
    assert torch.equal(wide["labels"][:, :7], batch["labels"]) and (wide["labels"][:, 7] == IGNORE).all()


def test_collate_packed_mask_is_block_diagonal_causal_in_the_given_dtype():
    first = TokenizedExample([1, 2, 3], [1, 2, 3])
    second = TokenizedExample([4, 5], [4, 5])
    for dtype in (torch.float32, torch.bfloat16):
        mask = collate_packed([[first, second], [second]], pad_id=0, dtype=dtype)["attention_mask"]
        assert mask.shape == (2, 1, 5, 5) and mask.dtype == dtype
        allowed = (mask == 0)[:, 0]
        assert allowed[0].int().tolist() == [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ]
        assert allowed[1, :2, :2].int().tolist() == [[1, 0], [1, 1]]
        assert not allowed[1, :2, 2:].any() and not allowed[1, 2:, :2].any()  # padding is apart
        assert allowed[1].diagonal().all()  # every padded query sees itself: no NaN softmax
        assert (mask[~(mask == 0)] == torch.finfo(dtype).min).all()


def test_collate_packed_rejects_a_row_mixing_replay_and_task():
    task = TokenizedExample([1, 2], [1, 2])
    replay = TokenizedExample([3, 4], [3, 4], replay=True)
    assert collate_packed([[task], [replay]], pad_id=0)["replay"].tolist() == [False, True]
    with pytest.raises(ValueError, match="mixes replay"):
        collate_packed([[task, replay]], pad_id=0)
