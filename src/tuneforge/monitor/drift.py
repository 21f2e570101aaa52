"""`tuneforge monitor drift`: are production prompts still like the prompts the model was trained on?

Production prompts are the user-side text of logged requests (system, developer, user and text-
completion prompt messages, joined as `Record.prompt_text()` joins a training record's system and
user turns).  Three signals compare them with the training prompts:

* length: the two-sample Kolmogorov-Smirnov statistic D (the largest gap between the two
  cumulative distributions, in [0, 1]) of prompt lengths, in tokens of the model's tokenizer
  when --model is given, else in words;
* vocabulary: the Jensen-Shannon divergence, base 2 (in [0, 1]), between the word unigram+bigram
  distributions of the two prompt sets (words and punctuation marks, after NFKC + casefold).  The
  distributions are not smoothed: JS is finite without smoothing (the mixture is positive wherever
  either side is), and add-alpha smoothing only pulls both sides toward uniform, shrinking the
  gap between same and different data (measured here: at alpha 0.1 a deliberately different
  sample stood 0.09-0.17 above a same-distribution one, unsmoothed 0.13-0.29);
* surprise: the share of production prompts whose perplexity under the model (the prompt as
  plain text) exceeds the 95th percentile of the training prompts' perplexities: about 0.05
  when nothing changed.

Small samples.  A divergence between a sample and a reference is biased upward by the sample's
size alone: JS between 30 prompts drawn from the training file and the rest of it is about 0.5,
because 30 prompts use only a sliver of the vocabulary.  A fixed threshold on raw scores would
flag every small sample, or none.  So each signal is computed twice: production vs the training
prompts (the raw score), and `DRAWS` times for a random sample of the training prompts, of the
production sample's size, held out from the rest of them (the training data against itself:
the noise and bias of that sample size).  The drift score is the raw score minus the median of
those draws: about 0 for traffic drawn from the training distribution at any sample size, and the
size of the real difference otherwise.  A signal is flagged when its drift score exceeds its
threshold *and* the raw score exceeds the 99th percentile of the draws, so a small sample is not
flagged on noise alone (and a huge one is not flagged on a significant but negligible shift).
The held-out draws hold at most half the training prompts, and compare with the rest rather
than the whole set; both make the baseline's bias at least the production comparison's, so the
correction errs toward not flagging.

Default thresholds (`DEFAULT_THRESHOLDS`) come from drift scores measured on the project's own sets
(examples/intents, examples/identity, resources/replay_prompts.jsonl), 100 random samples per case:
samples of 30-50 prompts from the training distribution (intents test vs train; held-out splits of
the intents, identity and general prompt sets) scored at most +0.20 on length and +0.05 on
vocabulary, and none of 800 was flagged (at 10-20 prompts, 0-3% were, mostly on length); samples of
30-50 deliberately different prompts (general questions vs support messages and back, general
questions vs the identity set) scored +0.10..+0.28 on vocabulary and all 180 were flagged.  The
surprise threshold (0.15 over a median near 0.05: a share above about 0.2) was checked with
SmolLM2-135M on 40 prompts: scrambled support messages scored +0.75 and code +0.25, their in-order
originals 0.00.  General questions are *less* surprising than support messages to that model, so
surprise alone misses that drift; vocabulary does not.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tuneforge.data.cleaning import normalize
from tuneforge.data.formats import Mapping, SourceReader
from tuneforge.data.records import Record
from tuneforge.data.readers import expand
from tuneforge.errors import ConfigError, DataError
from tuneforge.monitor.store import LoggedRequest

SIGNALS = ("length", "vocabulary", "surprise")
DEFAULT_THRESHOLDS = {"length": 0.2, "vocabulary": 0.08, "surprise": 0.15}
PROMPT_ROLES = ("system", "developer", "user", "prompt")
DRAWS = 200  # held-out samples of the training prompts per signal
GUARD = 0.99  # the raw score must exceed this quantile of the draws to be flagged
SURPRISE_QUANTILE = 0.95
MIN_TRAINING_PROMPTS = 10  # the baseline holds out samples of them
MAX_TRAINING_PROMPTS = 5000  # a uniform sample of bigger training sets (seeded)
MAX_PRODUCTION_PROMPTS = 5000  # the most recent ones
MAX_PERPLEXITY_PROMPTS = 500  # of each side, for the surprise signal (a forward pass each)
MAX_PROMPT_TOKENS = 512
TOKEN_BUDGET = 2048  # prompt tokens per forward pass (their logits: 2048 x vocabulary floats)
WORD = re.compile(r"\w+")
TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Signal:
    name: str
    measure: str  # what `raw` is
    raw: float  # production vs training
    baseline: float  # median of the training data's held-out samples vs the rest
    baseline_high: float  # their GUARD quantile
    threshold: float

    @property
    def score(self) -> float:
        """The drift score: how far production is beyond what a same-size sample of training data scores."""
        return self.raw - self.baseline

    @property
    def flagged(self) -> bool:
        return self.score > self.threshold and self.raw > self.baseline_high

    def as_dict(self) -> dict:
        return {"signal": self.name, "measure": self.measure, "raw": self.raw, "baseline_median": self.baseline,
                f"baseline_p{round(GUARD * 100)}": self.baseline_high, "score": self.score,
                "threshold": self.threshold, "flagged": self.flagged}


@dataclass
class DriftReport:
    production_prompts: int
    training_prompts: int
    signals: list[Signal]
    skipped: dict[str, str] = field(default_factory=dict)  # signal -> why it was not measured

    @property
    def drifted(self) -> bool:
        return any(signal.flagged for signal in self.signals)

    def as_dict(self) -> dict:
        return {"drifted": self.drifted, "verdict": "drift" if self.drifted else "no drift",
                "production_prompts": self.production_prompts, "training_prompts": self.training_prompts,
                "draws": DRAWS, "signals": [signal.as_dict() for signal in self.signals], "skipped": self.skipped}


# ---------------------------------------------------------------------------------------------
# Prompts


def production_prompt(request: LoggedRequest) -> str:
    return "\n".join(str(m.get("content") or "") for m in request.messages if m.get("role") in PROMPT_ROLES).strip()


def production_prompts(requests: Sequence[LoggedRequest], limit: int = MAX_PRODUCTION_PROMPTS) -> list[str]:
    """The most recent `limit` non-empty prompts, oldest first."""
    prompts = [text for text in (production_prompt(r) for r in requests) if text]
    return prompts[-limit:]


def training_prompts(sources: Sequence[str], fmt: str = "auto", mapping: Mapping = Mapping(),
                     limit: int = MAX_TRAINING_PROMPTS, seed: int = 0) -> list[str]:
    """The training records' prompt texts, streamed; a uniform sample of `limit` (seeded reservoir
    sampling) when there are more.  Records the readers reject are passed over: they are not trained on."""
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    seen = 0
    for source in sources:
        for path in expand(source):
            for item in SourceReader(path, fmt, mapping):
                text = item.prompt_text().strip() if isinstance(item, Record) else ""
                if not text:
                    continue
                seen += 1
                if len(prompts) < limit:
                    prompts.append(text)
                else:
                    slot = int(rng.integers(seen))
                    if slot < limit:
                        prompts[slot] = text
    if not prompts:
        raise DataError(f"{', '.join(map(str, sources))}: no training prompts to compare with")
    return prompts


# ---------------------------------------------------------------------------------------------
# Scores


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2, between two count vectors over the same keys (0 = same, 1 = disjoint)."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nonzero = x > 0
        return float(np.sum(x[nonzero] * np.log2(x[nonzero] / m[nonzero])))

    return min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def ngrams(text: str) -> list[str]:
    tokens = TOKEN.findall(normalize(text))
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def word_count(text: str) -> int:
    return len(WORD.findall(normalize(text)))


def held_out(total: int, wanted: int, rng: np.random.Generator) -> tuple[int, list[np.ndarray]]:
    """The baseline's sample size (at most half the training prompts) and DRAWS permutations."""
    size = max(1, min(wanted, total // 2))
    return size, [rng.permutation(total) for _ in range(DRAWS)]


def calibrated(name: str, measure: str, raw: float, draws: list[float], threshold: float) -> Signal:
    return Signal(name, measure, raw, float(np.median(draws)), float(np.quantile(draws, GUARD)), threshold)


def length_signal(train: np.ndarray, production: np.ndarray, unit: str, threshold: float,
                  rng: np.random.Generator) -> Signal:
    size, permutations = held_out(len(train), len(production), rng)
    draws = [ks_statistic(train[p[:size]], train[p[size:]]) for p in permutations]
    return calibrated("length", f"Kolmogorov-Smirnov D of prompt lengths ({unit})",
                      ks_statistic(production, train), draws, threshold)


def vocabulary_signal(train: Sequence[str], production: Sequence[str], threshold: float,
                      rng: np.random.Generator) -> Signal:
    index: dict[str, int] = {}
    train_ids = [np.array([index.setdefault(g, len(index)) for g in ngrams(t)], dtype=np.int64) for t in train]
    production_ids = np.array([index.setdefault(g, len(index)) for t in production for g in ngrams(t)], dtype=np.int64)
    total = np.bincount(np.concatenate(train_ids), minlength=len(index)).astype(float)
    raw = js_divergence(np.bincount(production_ids, minlength=len(index)).astype(float), total)
    size, permutations = held_out(len(train), len(production), rng)
    draws = []
    for permutation in permutations:
        sample = np.bincount(np.concatenate([train_ids[i] for i in permutation[:size]]), minlength=len(index))
        draws.append(js_divergence(sample.astype(float), total - sample))
    return calibrated("vocabulary", "Jensen-Shannon divergence (base 2) of word unigram+bigram distributions",
                      raw, draws, threshold)


def surprise_share(train: np.ndarray, production: np.ndarray) -> float:
    return float(np.mean(production > np.quantile(train, SURPRISE_QUANTILE)))


def surprise_signal(train: np.ndarray, production: np.ndarray, threshold: float, rng: np.random.Generator) -> Signal:
    size, permutations = held_out(len(train), len(production), rng)
    draws = [surprise_share(train[p[size:]], train[p[:size]]) for p in permutations]
    return calibrated("surprise", f"share of prompts above the training prompts' p{round(SURPRISE_QUANTILE * 100)} "
                      "perplexity", surprise_share(train, production), draws, threshold)


# ---------------------------------------------------------------------------------------------
# The model's side


def prompt_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each prompt as the tokenizer encodes plain text, cut to MAX_PROMPT_TOKENS."""
    return [ids[:MAX_PROMPT_TOKENS] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def prompt_perplexities(model, tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Each text's perplexity under the model, read as plain text after a BOS (else EOS) token.

    The start token gives the first word a context, so every token of the prompt is scored.
    Batches are sorted by length and filled up to TOKEN_BUDGET tokens (the logits of a batch are
    its tokens x the vocabulary in float32)."""
    import torch
    import torch.nn.functional as F

    from tuneforge.data.batching import collate
    from tuneforge.data.template import IGNORE, TokenizedExample

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    examples = []
    for ids in prompt_token_ids(tokenizer, texts):
        ids = [start, *ids] if start is not None else ids
        examples.append(TokenizedExample(ids, [IGNORE, *ids[1:]]))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    result = np.full(len(examples), np.nan)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch: list[int] = []

    def run(indices: list[int]) -> None:
        inputs = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad).items()}
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        targets = inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none")
        counts = (targets != IGNORE).sum(dim=1).clamp(min=1)
        mean_loss = (losses.sum(dim=1) / counts).cpu().numpy()
        result[indices] = np.exp(np.minimum(mean_loss, 50.0))

    for i in order:
        if batch and (len(batch) + 1) * len(examples[i].input_ids) > TOKEN_BUDGET:
            run(batch)
            batch = []
        batch.append(i)
    if batch:
        run(batch)
    return result


# ---------------------------------------------------------------------------------------------
# The check


def check_drift(train: Sequence[str], production: Sequence[str], thresholds: dict[str, float] | None = None,
                model=None, tokenizer=None, seed: int = 0) -> DriftReport:
    """Every signal that can be measured: length and vocabulary always, surprise when a model is given.

    `tokenizer` alone measures lengths in tokens; without one, lengths are in words."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    if len(train) < MIN_TRAINING_PROMPTS or not production:
        raise ValueError(f"check_drift needs at least {MIN_TRAINING_PROMPTS} training prompts and one production prompt")
    rng = np.random.default_rng(seed)
    if tokenizer is not None:
        unit = "tokens"
        lengths: Callable[[Sequence[str]], np.ndarray] = lambda texts: np.array(  # noqa: E731
            [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]])
    else:
        unit = "words"
        lengths = lambda texts: np.array([word_count(t) for t in texts])  # noqa: E731
    signals = [length_signal(lengths(train), lengths(production), unit, thresholds["length"], rng),
               vocabulary_signal(train, production, thresholds["vocabulary"], rng)]
    skipped = {}
    if model is None:
        skipped["surprise"] = "no model given (--model MODEL_OR_RUN measures perplexity)"
    else:
        pick = np.random.default_rng(seed)
        train_sample = subsample(train, MAX_PERPLEXITY_PROMPTS, pick)
        production_sample = subsample(production, MAX_PERPLEXITY_PROMPTS, pick)
        signals.append(surprise_signal(prompt_perplexities(model, tokenizer, train_sample),
                                       prompt_perplexities(model, tokenizer, production_sample),
                                       thresholds["surprise"], rng))
    return DriftReport(len(production), len(train), signals, skipped)


def subsample(texts: Sequence[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in np.sort(rng.choice(len(texts), limit, replace=False))]


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """--threshold SIGNAL=VALUE items -> {signal: value}."""
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in SIGNALS:
            raise ConfigError(f"--threshold {item}: expected SIGNAL=VALUE with SIGNAL one of {', '.join(SIGNALS)}")
        try:
            found[name] = float(value)
        except ValueError:
            raise ConfigError(f"--threshold {item}: {value!r} is not a number") from None
        if not math.isfinite(found[name]):
            raise ConfigError(f"--threshold {item}: must be a finite number")
    return found


def print_report(console: Console, report: DriftReport) -> None:
    table = Table(title=f"Drift: {report.production_prompts:,} production prompts vs {report.training_prompts:,} "
                  "training prompts", title_justify="left")
    for column in ("signal", "production", "training: median", f"p{round(GUARD * 100)}", "drift score",
                   "threshold", ""):
        table.add_column(column, justify="left" if column in ("signal", "") else "right")
    for signal in report.signals:
        table.add_row(signal.name, f"{signal.raw:.3f}", f"{signal.baseline:.3f}", f"{signal.baseline_high:.3f}",
                      f"{signal.score:+.3f}", f"{signal.threshold:g}", "[bold red]DRIFT[/]" if signal.flagged else "ok")
    console.print(table)
    for signal in report.signals:
        console.print(f"  {signal.name}: {signal.measure}", highlight=False)
    for name, why in report.skipped.items():
        console.print(f"  {name}: not measured: {why}", highlight=False)
    console.print(f"  training: the same score for {DRAWS} samples of the training prompts, as many as production's "
                  "(at most half), held out from the rest. drift score = production - training median; a signal is "
                  f"flagged when its drift score exceeds the threshold and production exceeds the training p{round(GUARD * 100)}.",
                  highlight=False)
    if report.production_prompts < 20:
        console.print(f"  only {report.production_prompts} production prompts: only a large difference can show",
                      highlight=False)
    flagged = [s.name for s in report.signals if s.flagged]
    console.print(f"verdict: [bold red]drift[/] ({', '.join(flagged)})" if flagged else "verdict: [green]no drift[/]",
                  highlight=False)


def write_json(path: Path, report: DriftReport, extra: dict) -> None:
    from tuneforge.files import write_atomic

    write_atomic(Path(path), json.dumps({**report.as_dict(), **extra}, indent=2, ensure_ascii=False) + "\n")
