"""The parity gate: the exported files must answer exactly as the run's model does, and end their turn.

Outputs that differ between training and serving are a common complaint about fine-tuning
tools: a merge in the wrong dtype, a generation config without the chat's end-of-turn token
(the served model talks on past its answer), a chat template lost on the way.  So the export is
loaded back from the files written and asked the golden prompts beside the run's own model (the
adapter model for LoRA), both in float32:
- the logits over each prompt and the reference reply (teacher-forced) agree within `atol`;
- the greedy replies are identical token for token; the exported model stops by its own
  generation config, as plain `transformers` and vLLM do, the reference by tuneforge's stop ids;
- replies end with an end-of-turn token rather than the length limit on at least half of the
  prompts: a model that does not end its turn is not fit to serve, whatever its parity.

Measured on SmolLM2-135M with the quickstart's LoRA adapter (4 prompts, logits up to 54): merging
in float32 changes logits by at most 8.8e-5; storing the merged weights in float16 by 0.065 and
in bfloat16 by 0.43, where greedy tokens began to differ.  Hence the default tolerances below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tuneforge.config import RunConfig
from tuneforge.data.formats import Mapping, SourceReader, read_records
from tuneforge.data.readers import read
from tuneforge.data.records import Record
from tuneforge.data.template import IGNORE
from tuneforge.errors import ModelError
from tuneforge.evaluate.before_after import builtin_general_questions
from tuneforge.evaluate.evaluator import eval_examples
from tuneforge.data.probes import read_probes
from tuneforge.models.generate import render_prompt

ATOL = {"float32": 1e-3, "float16": 0.25, "bfloat16": 1.0}  # max |logit difference|, by the exported dtype
MIN_STOPPED = 0.5  # the fraction of prompts whose reply must end with an end-of-turn token


@dataclass(frozen=True)
class GoldenPrompt:
    source: str  # where it came from: "file:line", "validation split row N", ...
    text: str  # the rendered prompt: chat template with the generation prompt
    input_ids: list[int]
    messages: tuple[dict, ...] | None = None  # None for prompts taken from tokenized data


def tokenized(tokenizer, source: str, messages: list[dict] | None, text: str = "") -> GoldenPrompt:
    """A prompt rendered with `tokenizer`'s chat template (when given as messages) and tokenized as generation does."""
    if messages is not None:
        if tokenizer.chat_template is None:
            raise ModelError("the model's tokenizer has no chat template, so chat prompts cannot be rendered; "
                             "pass --prompts with prompts for this model")
        text = render_prompt(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return GoldenPrompt(source, text, ids, None if messages is None else tuple(messages))


def retokenized(prompts: list[GoldenPrompt], tokenizer) -> list[GoldenPrompt]:
    """The same prompts rendered by another tokenizer (the export's): they must come out identical."""
    return [tokenized(tokenizer, p.source, None if p.messages is None else list(p.messages), p.text) for p in prompts]



def golden_prompts(config: RunConfig | None, tokenizer, prompts_file: Path | None, limit: int) -> tuple[list[GoldenPrompt], str]:
    """(the first `limit` golden prompts, where they came from): --prompts, else the run's validation
    files, else its validation split, else its eval.prompts, else the shipped general questions."""
    if prompts_file is not None:
        return rendered(file_conversations(prompts_file, limit), tokenizer), str(prompts_file)
    if config is not None and config.data.validation:
        mapping = Mapping(config.data.columns, config.data.roles)
        conversations = []
        for source in config.data.validation:
            conversations += data_conversations(source, config.data.format, mapping, limit - len(conversations))
        if conversations:
            return rendered(conversations, tokenizer), f"data.validation ({', '.join(config.data.validation)})"
    if config is not None and config.data.val_split > 0:
        prompts = split_prompts(config, tokenizer, limit)
        if prompts:
            return prompts, f"the validation split (data.val_split={config.data.val_split})"
    probes_file = (config.eval.prompts if config is not None else None) or builtin_general_questions()
    probes = read_probes(probes_file)[:limit]
    conversations = [(f"{probes_file.name}:{i + 1}", [{"role": "user", "content": p.prompt}]) for i, p in enumerate(probes)]
    return rendered(conversations, tokenizer), str(probes_file)


def prompts_of(records: list[Record]) -> list[tuple[str, list[dict]]]:
    """(source, messages before the last assistant turn) of each chat or classification record."""
    return [(example.source, example.prompt) for example in eval_examples(records)]


def file_conversations(path: Path, limit: int) -> list[tuple[str, list[dict]]]:
    """A --prompts file: JSONL of {"prompt": ...} (as eval.prompts), or chat data in any format."""
    first = next((raw.value for raw in read(str(path)) if raw.problem is None), None)
    if isinstance(first, dict) and isinstance(first.get("prompt"), str) and not {"chosen", "completion", "label"} & set(first):
        probes = read_probes(path)[:limit]
        return [(f"{path}:{i + 1}", [{"role": "user", "content": p.prompt}]) for i, p in enumerate(probes)]
    return prompts_of(read_records(path))[:limit]


def data_conversations(source: str, fmt: str, mapping: Mapping, limit: int) -> list[tuple[str, list[dict]]]:
    """The first `limit` prompts of a validation source, streamed (the file may be large); records
    that training skipped as invalid are skipped here too."""
    found: list[tuple[str, list[dict]]] = []
    for item in SourceReader(source, fmt, mapping):
        if len(found) >= limit:
            break
        if isinstance(item, Record):
            found += prompts_of([item])
    return found


def split_prompts(config: RunConfig, tokenizer, limit: int) -> list[GoldenPrompt]:
    """Prompts of the validation split held out of the training files: the prepared (cached) data's
    tokens up to the last trained reply, exactly as training rendered them."""
    from tuneforge.data.prepare import prepare
    from tuneforge.models.tokenizer import training_tokenizer

    data_tokenizer, stop_ids = training_tokenizer(config.model.name, config.data.template)
    data = prepare(config.data, data_tokenizer, stop_ids, config.train.max_seq_length, config.train.seed)
    prompts = []
    for row in range(len(data.validation)):
        if len(prompts) >= limit:
            break
        example = data.validation[row]
        ids = example.input_ids[: last_reply_start(example.labels)]
        if ids:  # as text, so that the export's tokenizer is checked on it too
            prompts.append(tokenized(tokenizer, f"validation split row {row}", None, data_tokenizer.decode(ids)))
    return prompts


def last_reply_start(labels: list[int]) -> int:
    """Where the last run of trained tokens (the last reply and its end-of-turn token) begins."""
    end = max((i for i, label in enumerate(labels) if label != IGNORE), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return max(start, 0)


def rendered(conversations: list[tuple[str, list[dict]]], tokenizer) -> list[GoldenPrompt]:
    return [tokenized(tokenizer, source, messages) for source, messages in conversations]



@dataclass
class Answers:
    """One model's greedy replies to the golden prompts, and its fp32 logits over prompt + the reference reply."""

    replies: list[list[int]] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 matmuls while checking: TF32 (torch's "high" precision) keeps 10 mantissa bits, far
    too few for the float32 tolerance."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def eos_ids(generation_config) -> list[int]:
    eos = generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def answer(model, prompts: list[GoldenPrompt], generation_config, max_new_tokens: int,
           reference: Answers | None = None, batch_size: int = 8) -> Answers:
    """Greedy replies, generated with `generation_config` (whose eos ids are the stop tokens), and the
    logits over each prompt followed by the reference's reply (this model's own when it is the reference).

    Replies are generated in left-padded batches (3x faster than one at a time on a busy 2-core CPU for
    SmolLM2-135M); both sides of the check use the same batches, so padding cannot tell them apart.
    Logits are computed one prompt at a time, without padding."""
    device = next(model.parameters()).device
    stops = set(eos_ids(generation_config))
    pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else min(stops, default=0)
    answers = Answers()
    for start in range(0, len(prompts), batch_size):
        batch = [p.input_ids for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in batch)
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in batch], device=device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in batch], device=device)
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation_config,
                                do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        for row in output[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stops), None)  # padding follows a stop
            answers.replies.append(row[:end] if end else row)
            answers.stopped.append(end is not None)
    for index, prompt in enumerate(prompts):
        scored = (reference or answers).replies[index]
        full = torch.tensor([prompt.input_ids + scored], device=device)
        answers.logits.append(model(input_ids=full).logits[0].float().cpu())
    return answers


@dataclass
class PromptCheck:
    source: str
    prompt: str
    reply: str  # the reference model's reply
    exported_reply: str
    new_tokens: int
    same_prompt: bool  # the export's tokenizer and chat template render the prompt to the same tokens
    identical: bool  # greedy replies equal token for token
    first_difference: int | None  # index of the first differing reply token
    stopped: bool  # the reference reply ended with an end-of-turn token
    exported_stopped: bool
    max_abs_logit_diff: float | None  # None when the prompts differ in length (not comparable)


@dataclass
class ParityReport:
    passed: bool
    reasons: list[str]  # why it failed (empty when passed)
    warnings: list[str]
    mode: str  # "merge" or "adapter"
    dtype: str  # the exported weights' dtype
    atol: float
    max_abs_logit_diff: float
    max_new_tokens: int
    prompts_source: str
    end_of_turn_ids: list[int]
    prompts: list[PromptCheck]

    def as_dict(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n")

    def summary(self) -> str:
        n = len(self.prompts)
        identical = sum(p.identical for p in self.prompts)
        stopped = sum(p.stopped for p in self.prompts)
        return (f"parity ({self.mode}, {self.dtype}) on {n} golden prompts from {self.prompts_source}: "
                f"max |logit diff| {self.max_abs_logit_diff:.3g} (tolerance {self.atol:g}); greedy replies "
                f"identical {identical}/{n}; ended their turn {stopped}/{n} within {self.max_new_tokens} new tokens")


def compare(prompts: list[GoldenPrompt], exported_prompts: list[GoldenPrompt], tokenizer, reference: Answers,
            exported: Answers) -> list[PromptCheck]:
    checks = []
    for i, (prompt, ref, got) in enumerate(zip(prompts, reference.replies, exported.replies)):
        difference = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), None)
        if difference is None and len(ref) != len(got):
            difference = min(len(ref), len(got))
        ref_logits, got_logits = reference.logits[i], exported.logits[i]
        diff = float((ref_logits - got_logits).abs().max()) if ref_logits.shape == got_logits.shape else None
        checks.append(PromptCheck(
            prompt.source, prompt.text, tokenizer.decode(ref, skip_special_tokens=True),
            tokenizer.decode(got, skip_special_tokens=True), len(ref),
            prompt.input_ids == exported_prompts[i].input_ids, difference is None, difference,
            reference.stopped[i], exported.stopped[i], diff,
        ))
    return checks


def verdict(checks: list[PromptCheck], tokenizer, reference: Answers, exported: Answers, atol: float,
            max_new_tokens: int) -> tuple[list[str], list[str]]:
    """(reasons the check fails, warnings)."""
    reasons, warnings = [], []
    n = len(checks)
    rendered_differently = [c.source for c in checks if not c.same_prompt]
    if rendered_differently:
        reasons.append(f"the export's tokenizer or chat template renders {len(rendered_differently)} of {n} prompts "
                       f"differently, first {rendered_differently[0]}")
    over = [c for c in checks if c.max_abs_logit_diff is not None and not c.max_abs_logit_diff <= atol]  # NaN too
    if over:
        worst = max(over, key=lambda c: math.inf if math.isnan(c.max_abs_logit_diff) else c.max_abs_logit_diff)
        reasons.append(f"logits differ by up to {worst.max_abs_logit_diff:.3g} (tolerance {atol:g}) on {len(over)} "
                       f"of {n} prompts, most on {worst.source}")
    differ = [i for i, c in enumerate(checks) if not c.identical]
    if differ:
        i = differ[0]
        at = checks[i].first_difference
        reasons.append(f"greedy replies differ on {len(differ)} of {n} prompts; first on {checks[i].source} at reply "
                       f"token {at}: the run's model gives {piece(tokenizer, reference.replies[i], at)}, the export "
                       f"{piece(tokenizer, exported.replies[i], at)}")
    unfinished = [c.source for c in checks if not c.stopped]
    if unfinished:
        message = (f"{len(unfinished)} of {n} replies did not end their turn within {max_new_tokens} new tokens: "
                   f"{', '.join(unfinished)}")
        if n - len(unfinished) < MIN_STOPPED * n:
            reasons.append(f"{message}; a model must end its turn on at least {MIN_STOPPED:.0%} of the prompts "
                           "(raise --max-new-tokens if its replies are long)")
        else:
            warnings.append(message)
    return reasons, warnings


def piece(tokenizer, reply: list[int], at: int) -> str:
    if at >= len(reply):
        return "the end of its reply"
    return f"{tokenizer.decode(reply[at : at + 4])!r}..."


def check(prompts: list[GoldenPrompt], exported_prompts: list[GoldenPrompt], tokenizer, reference: Answers,
          exported: Answers, *, mode: str, dtype: str, atol: float, max_new_tokens: int, prompts_source: str,
          end_of_turn_ids: list[int]) -> ParityReport:
    """The gate's verdict on one export: the run's model's answers (`reference`) against the export's."""
    checks = compare(prompts, exported_prompts, tokenizer, reference, exported)
    reasons, warnings = verdict(checks, tokenizer, reference, exported, atol, max_new_tokens)
    diffs = [c.max_abs_logit_diff for c in checks if c.max_abs_logit_diff is not None]
    worst = max(diffs, key=lambda d: math.inf if math.isnan(d) else d, default=math.nan)
    return ParityReport(not reasons, reasons, warnings, mode, dtype, atol, worst, max_new_tokens, prompts_source,
                        end_of_turn_ids, checks)
