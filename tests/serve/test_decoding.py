"""Per-row sampling and the text stream: stop strings, held-back text, seeds, top-p, suppressed tokens."""

from __future__ import annotations

import pytest
import torch

from tuneforge.models.sampling import RowSampling, choose_tokens, new_generator
from tuneforge.serve.decoding import TextStream, held_back


def stream_of(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop)
    pieces = [stream.add(token) for token in tokenizer.encode(text)]
    return pieces, stream


def test_text_is_released_piece_by_piece_and_complete(chatml_tokenizer):
    text = "The answer is 42, and that is final."
    pieces, stream = stream_of(chatml_tokenizer, text, ())
    assert "".join(pieces) + stream.finish() == text
    assert sum(1 for p in pieces if p) > 3  # streamed, not released at the end


def test_stop_string_ends_the_text_before_it(chatml_tokenizer):
    pieces, stream = stream_of(chatml_tokenizer, "first line\nEND here\nmore text", ("END",))
    assert stream.stopped
    assert "".join(pieces) + stream.finish() == "first line\n"


def test_a_possible_stop_prefix_is_held_back_until_it_cannot_be_one(chatml_tokenizer):
    stream = TextStream(chatml_tokenizer, ("STOPNOW",))
    released = "".join(stream.add(t) for t in chatml_tokenizer.encode("go STOP"))
    assert released == "go "  # "STOP" could still become "STOPNOW"
    released += "".join(stream.add(t) for t in chatml_tokenizer.encode("PED"))
    assert released + stream.finish() == "go STOPPED"
    assert not stream.stopped


def test_partial_utf8_is_held_back(chatml_tokenizer):
    text = "café ☕ ok"
    pieces, stream = stream_of(chatml_tokenizer, text, ())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.finish() == text


@pytest.mark.parametrize("text,stops,expected", [
    ("abc", ("cd",), 1), ("abc", ("bcd", "cx"), 2), ("abc", ("x",), 0), ("abc", ("abc",), 0), ("", ("a",), 0),
])
def test_held_back(text, stops, expected):
    assert held_back(text, stops) == expected


def rows(n, temperature=1.0, top_p=1.0, seed=0):
    return [RowSampling(temperature, top_p, new_generator(seed + i) if temperature > 0 else None) for i in range(n)]


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(4, 50)
    assert choose_tokens(logits.clone(), rows(4, temperature=0), None) == logits.argmax(-1).tolist()


def test_seeded_rows_repeat_and_ignore_their_neighbours():
    logits = torch.randn(3, 200)
    first = choose_tokens(logits.clone(), rows(3, seed=5), None)
    again = choose_tokens(logits.clone(), rows(3, seed=5), None)
    assert first == again
    # the same row in another batch (other neighbours, another position) draws the same token
    alone = choose_tokens(logits[1:2].clone(), [RowSampling(1.0, 1.0, new_generator(6))], None)
    assert alone == first[1:2]


def test_tiny_top_p_is_greedy_and_samples_have_probability():
    logits = torch.randn(6, 300)
    assert choose_tokens(logits.clone(), rows(6, top_p=1e-6), None) == logits.argmax(-1).tolist()
    masked = logits.clone()
    masked[:, :150] = float("-inf")  # zero probability: never chosen
    for seed in range(20):
        assert all(t >= 150 for t in choose_tokens(masked.clone(), rows(6, seed=seed), None))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {choose_tokens(logits.clone(), [RowSampling(1.0, 0.7, new_generator(s))], None)[0] for s in range(200)}
    assert seen == {0, 1}  # 0.5 + 0.3 covers 0.7; tokens 2 and 3 are outside


def test_suppressed_tokens_are_never_chosen():
    logits = torch.zeros(2, 10)
    logits[:, 3] = 10.0
    suppressed = torch.tensor([3, 4])
    assert 3 not in choose_tokens(logits.clone(), rows(2, temperature=0), suppressed)
    for seed in range(20):
        assert not {3, 4} & set(choose_tokens(logits.clone(), rows(2, seed=seed), suppressed))
