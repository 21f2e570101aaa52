"""`tuneforge serve --dtype`: float32 answers exactly as plain transformers, batched or alone; bfloat16 packs the model;
int8 answers as the same int8 model through transformers' generate."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from tuneforge.models.decode_attention import use_for_decoding
from tuneforge.models.packed import Int8Linear, PackedLinear, can_pack, for_decoding
from tuneforge.serve.commands import options_from
from tuneforge.serve.engine import Delta, Done, Failed, Request, SamplingParams
from tuneforge.serve.live import new_engine
from tuneforge.serve.options import ServeOptions

PROMPTS = ["hello there", "What is 2 plus 2? Tell me", "a", "import torch\nfrom x import y", "def f(x):\n    return"]


class Reply:
    def __init__(self):
        self.pieces, self.done = [], threading.Event()

    def __call__(self, event):
        if isinstance(event, Delta):
            self.pieces.append(event.text)
        if isinstance(event, Done | Failed):
            self.failed = isinstance(event, Failed)
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(60) and not self.failed
        return "".join(self.pieces)


def served_copy(tiny_model):
    from tuneforge.serve.served import load_served

    return load_served(str(tiny_model))  # its own copy: a bf16 engine converts the model in place


def answers(engine, prompts: list[list[int]], together: bool) -> list[str]:
    """Greedy replies of 16 tokens, submitted all at once (one batch) or one after another."""
    replies = []
    for prompt in prompts:
        replies.append(Reply())
        engine.submit(Request(prompt, SamplingParams(max_tokens=16, temperature=0), replies[-1]))
        if not together:
            replies[-1].text()
    return [r.text() for r in replies]


def reference(model, tokenizer, prompt: list[int], stops) -> str:
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=sorted(stops),
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)


def test_float32_serving_answers_as_plain_transformers_alone_and_batched(tiny_model):
    served = served_copy(tiny_model)
    plain = copy.deepcopy(served.model)
    engine = new_engine(served, ServeOptions())
    engine.start()
    try:
        prompts = [served.tokenizer.encode(p) for p in PROMPTS]
        expected = [reference(plain, served.tokenizer, p, engine.stop_ids) for p in prompts]
        assert answers(engine, prompts, together=False) == expected
        assert answers(engine, prompts, together=True) == expected
        assert engine.stats.decoded_rows > engine.stats.decode_steps  # the second round really was batched
    finally:
        engine.shutdown(10)
    assert all(type(m) is not PackedLinear for m in served.model.modules())


def answers_as(served, dtype: str, plain, layer: type) -> None:
    """The engine decoding in `dtype` converts its model's 15 linear layers to `layer` and answers greedily, alone
    and batched, as `plain` does through transformers' generate."""
    engine = new_engine(served, ServeOptions(dtype=dtype))
    engine.start()
    try:
        assert engine.model.dtype == torch.bfloat16
        assert sum(type(m) is layer for m in engine.model.modules()) == 15
        prompts = [served.tokenizer.encode(p) for p in PROMPTS]
        alone = answers(engine, prompts, together=False)
        assert alone == [reference(plain, served.tokenizer, p, engine.stop_ids) for p in prompts]
        assert answers(engine, prompts, together=True) == alone
    finally:
        engine.shutdown(10)


@pytest.mark.skipif(not can_pack(torch.device("cpu")), reason="this CPU has no native bf16: nothing to pack")
def test_bfloat16_serving_packs_the_model_and_answers_as_the_plain_bf16_model(tiny_model):
    served = served_copy(tiny_model)
    plain = copy.deepcopy(served.model).to(torch.bfloat16)
    use_for_decoding(plain)  # the same attention, so only the packing differs
    answers_as(served, "bfloat16", plain, PackedLinear)


def test_int8_serving_answers_as_the_int8_model_through_generate(tiny_model):
    served = served_copy(tiny_model)
    plain = for_decoding(copy.deepcopy(served.model), "int8")  # the same conversion, run by transformers' generate
    answers_as(served, "int8", plain, Int8Linear)


def test_dtype_option_is_checked():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, int8"):
        ServeOptions(dtype="float16")
    from tuneforge.cli import build_parser

    for dtype in ("bfloat16", "int8"):
        args = build_parser().parse_args(["serve", "some-model", "--dtype", dtype, "--no-log"])
        assert options_from(args).dtype == dtype
