from tuneforge.data.batching import collate, epoch_batches
from tuneforge.data.template import IGNORE, TokenizedExample


def test_epoch_batches_are_deterministic_and_cover_every_example():
    lengths = [(i * 37) % 101 for i in range(50)]
    first = epoch_batches(lengths, 4, seed=1, epoch=0)
    assert first == epoch_batches(lengths, 4, seed=1, epoch=0)
    assert first != epoch_batches(lengths, 4, seed=1, epoch=1)
    assert sorted(i for batch in first for i in batch) == list(range(50))
    assert all(len(batch) <= 4 for batch in first)


def test_collate_pads_right_with_ignored_labels():
    batch = collate([TokenizedExample([1, 2, 3], [IGNORE, 2, 3]), TokenizedExample([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_rounds_the_width_up_to_a_multiple_with_padding():
    examples = [TokenizedExample(list(range(1, 10)), list(range(1, 10))), TokenizedExample([4, 5], [IGNORE, 5])]
    batch = collate(examples, pad_id=0, multiple=8)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum().item() == 11  # the extra columns are padding, never attended
    assert (batch["labels"][:, 9:] == IGNORE).all() and (batch["labels"][1, 2:] == IGNORE).all()
    assert collate(examples[:1], pad_id=0, multiple=9)["input_ids"].shape == (1, 9)  # already a multiple
