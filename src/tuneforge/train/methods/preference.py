"""Preference methods on the step driver: pairs (task: preference: DPO, IPO, ORPO, SimPO) and rated
replies (task: kto).

A micro-batch holds each example's prompt before each of its answers, column by column (all chosen
rows, then all rejected rows; for KTO the rated rows, then the mismatched rows of the KL estimate:
example i's prompt with the answer of a fixed partner, the next example of its split).  The model runs
over one column, then the other: by default the chosen rows are recomputed in backward, so autograd
never keeps both columns' activations (`preference.recompute_chosen`), and KTO's mismatched rows run
without gradient.  The loss terms are sums over examples, so the driver divides by the window's example
count (train/method.py).

The reference model is never a second copy unless asked: with LoRA it is the same network with the
adapter switched off (`disable_adapter`, as kl_to_base); for a full fine-tune either a frozen copy
(`reference: frozen_copy`) or the starting weights' log-probabilities computed once before the first
step and cached under TUNEFORGE_HOME keyed by the tokenized data and the start (`precomputed`, also
what a run from model.init_from uses: its reference is the version it starts from, not the base).
ORPO and SimPO need no reference pass at all.

Measures per step and evaluation: reward accuracy (chosen reward > rejected), margin, chosen and
rejected rewards and summed log-probabilities, and the token-level KL to the reference where the
reference is a model.  The end-of-run table adds the base-vs-tuned figures on held-out pairs, the
general-ability check, perplexity on general text and greedy answers side by side
(evaluate/before_after.py, shared with chat SFT).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.config import RunConfig
from tuneforge.data.batching import WIDTH_MULTIPLE, epoch_batches
from tuneforge.data.preference import PreferenceData, PreferenceExample, prepare_preference, write_report
from tuneforge.data.probes import Probe
from tuneforge.data.template import IGNORE
from tuneforge.evaluate import before_after
from tuneforge.evaluate.evaluator import forgetting_warning
from tuneforge.evaluate.run_metrics import read_metrics
from tuneforge.models.load import load_causal_lm, training_dtype
from tuneforge.models.tokenizer import training_tokenizer
from tuneforge.paths import home
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import preference_loss as losses
from tuneforge.train import preflight as estimate
from tuneforge.train.method import PRIMARY, Batch, LossTerms, StepPlan, batch_loss
from tuneforge.train.methods.language_model import untouched
from tuneforge.train.setup import build_model

REFERENCE_FREE = ("orpo", "simpo")
HELD_OUT_PROMPTS = 8  # held-out prompts answered by base and tuned when eval.prompts is not set


@dataclass(frozen=True)
class Settings:
    """A run's preference settings, whichever task: the loss, its strengths and the reference."""

    loss: str  # dpo, ipo, orpo, simpo, kto
    beta: float
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    gamma: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    reference: str = "none"  # none, adapter_off, frozen_copy, precomputed
    recompute_chosen: bool = False

    @property
    def modes(self) -> tuple[str, str]:
        """How the policy runs each column (preference_loss.column_logps): chosen rows recomputed in backward,
        or KTO's mismatched rows without gradient (their KL estimate is a constant)."""
        if not self.paired:
            return ("grad", "no_grad")
        return ("recompute" if self.recompute_chosen else "grad", "grad")

    @property
    def paired(self) -> bool:
        return self.loss != "kto"


def settings_of(config: RunConfig) -> Settings:
    if config.task == "kto":
        k = config.kto
        return Settings("kto", k.beta, desirable_weight=k.desirable_weight, undesirable_weight=k.undesirable_weight,
                        reference=reference_of(config, k.reference, "kto"))
    p = config.preference
    return Settings(p.loss, p.beta, p.label_smoothing, p.sft_weight, p.simpo_gamma,
                    reference=reference_of(config, p.reference, p.loss), recompute_chosen=p.recompute_chosen)


def reference_of(config: RunConfig, setting: str, loss: str) -> str:
    """auto: the adapter switched off for a fresh LoRA run; precomputed log-probs of the start otherwise."""
    if loss in REFERENCE_FREE:
        return "none"
    if setting != "auto":
        return setting
    return "adapter_off" if config.method == "lora" and config.model.init_from is None else "precomputed"


class PreferenceMethod:
    """Pairs or rated replies: the answer rows column by column, the reference beside them, the loss summed."""

    evaluates_each_epoch = False

    def __init__(self, config: RunConfig, accelerator, console: Console):
        self.config, self.accelerator, self.console = config, accelerator, console
        self.settings = settings_of(config)
        self.weights = {PRIMARY: 1.0, **({"sft": self.settings.sft_weight} if self.settings.sft_weight > 0 else {})}
        self.run_dir = config.output_dir
        self.general_text = before_after.general_text(config.eval)
        self.reference_model = None
        self.cached: dict[str, torch.Tensor] = {}  # split -> precomputed reference log-probs, (examples, columns)

    # --- data and model -----------------------------------------------------------------------------

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        cfg = self.config.train
        self.tokenizer, self.stop_ids = training_tokenizer(self.config.model.name, self.config.data.template)
        self.data = prepare_preference(self.config.data, self.config.task, self.tokenizer, self.stop_ids,
                                       cfg.max_seq_length, cfg.seed)
        model, self.info, self.base_dir = build_model(self.config, self.accelerator.device, checkpoint)
        self.policy = model
        if self.settings.reference == "frozen_copy":
            # the dtype the policy starts in (full fine-tunes keep fp32 masters under autocast: models/load.py)
            dtype = torch.float32 if self.config.model.dtype == "auto" else training_dtype(self.config.model.dtype,
                                                                                            self.accelerator.device)
            self.reference_model = load_causal_lm(self.base_dir, dtype).to(self.accelerator.device).eval()
            self.reference_model.requires_grad_(False)
        return model

    def before_training(self, model, resuming: bool) -> None:
        """Base answers and general-text perplexity (once, cached), the precomputed reference, the data report."""
        config = self.config
        self.sets = probe_sets(config, self.data)
        with untouched(model, trained=resuming, adapter_is_start=config.model.init_from is None) as base:
            if base is not None:
                for probe_set in self.sets:
                    before_after.answer_with_base(probe_set, self.run_dir, resuming, base, self.tokenizer,
                                                  self.base_dir, config.eval.max_new_tokens)
                before_after.perplexity_with_base(self.run_dir, resuming, base, self.tokenizer, self.general_text,
                                                  config.eval.batch_size)
        if self.settings.reference == "precomputed":
            self.cached = precomputed_reference(self, model, resuming)
        write_report(self.data, self.run_dir)
        m = self.data.manifest()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.console.print(
            f"data: {m['train_records']} train / {m['validation_records']} validation "
            f"{'pairs' if self.settings.paired else 'rated replies'}, {m['train_tokens']:,} tokens; "
            f"{m['truncated_pairs']} cut to train.max_seq_length; {m['invalid_records']} invalid skipped; "
            f"loss {self.settings.loss}, reference {self.settings.reference}; trainable parameters {trainable:,}")

    # --- batches and loss ---------------------------------------------------------------------------

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        return epoch_batches(self.lengths(), batch_size, seed, epoch)

    def lengths(self) -> list[int]:
        return [unit_length(self.data.train, i, self.settings.paired) for i in range(len(self.data.train))]

    def batch(self, units: list[int], split: str = "train") -> Batch:
        examples = self.data.train if split == "train" else self.data.validation
        batch = collate(examples, units, self.settings.paired, self.tokenizer.pad_token_id)
        if split in self.cached:
            batch["reference"] = self.cached[split][units].T.reshape(-1)  # column-major, as the rows
        return batch

    def idle(self, batch: Batch) -> Batch:
        return {**batch, "weight": torch.zeros_like(batch["weight"])}

    def count(self, batch: Batch) -> int:
        return int(batch["weight"].sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def reference_logps(self, batch: Batch, keep: bool) -> losses.AnswerLogps | None:
        if self.settings.reference == "none":
            return None
        if "reference" in batch:
            return losses.AnswerLogps(batch["reference"], torch.ones_like(batch["reference"]))
        switched_off = self.policy.disable_adapter() if self.settings.reference == "adapter_off" else nullcontext()
        with torch.no_grad(), switched_off:  # the columns apart as the policy's: equal weights, equal numbers
            return losses.column_logps(self.reference_model or self.policy, batch, keep, ("no_grad", "no_grad"))

    def loss_terms(self, model, batch: Batch) -> LossTerms:
        keep = self.settings.reference in ("adapter_off", "frozen_copy")
        policy = losses.column_logps(model, batch, keep, self.settings.modes)
        reference = self.reference_logps(batch, keep)
        return example_terms(self.settings, batch, policy, reference)

    # --- evaluation, saving, report -----------------------------------------------------------------

    def validate(self, model, answers: bool) -> dict[str, float]:
        """The loss and every statistic per held-out example, as eval_*."""
        validation = self.data.validation
        if not validation:
            return {}
        size = self.config.eval.batch_size
        totals: dict[str, float] = {}
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            for start in range(0, len(validation), size):
                batch = {k: v.to(self.accelerator.device)
                         for k, v in self.batch(list(range(start, min(start + size, len(validation)))), "validation").items()}
                result = self.loss_terms(model, batch)
                for name, value in [(PRIMARY, float(result.terms[PRIMARY])), *result.stats.items()]:
                    totals[name] = totals.get(name, 0.0) + value
        model.train(was_training)
        return {f"eval_{name}": value / len(validation) for name, value in totals.items()}

    def preflight(self, model, state, plan: StepPlan):
        """SFT's estimate and warm-up pass (train/preflight.py) on the longest pair: its probe measures what
        autograd keeps for the pair's two rows (the reference pass keeps nothing), times train.batch_size."""
        return estimate.check(self.config, model, self.accelerator, self.console, self.lengths(), self.batch, state,
                              plan, batch_loss(self, model), kl_rows=False)

    def save_model(self, model, directory: Path, weights: dict | None) -> None:
        ckpt.save_model(model, self.tokenizer, self.info, directory, weights)

    def finish(self, model, eval_loss: tuple[float | None, float | None]):
        """Greedy answers of base and tuned side by side; held-out pair figures and the forgetting check."""
        model.eval()
        config = self.config
        tuned = {s.key: before_after.answer_with_tuned(s, self.run_dir, model, self.tokenizer,
                                                       config.eval.max_new_tokens) for s in self.sets}
        measures = held_out_measures(self.run_dir, self.settings.paired)
        task = next((s for s in self.sets if s.key == "task"), None)
        if task is not None:
            base = before_after.load_answers(before_after.answers_file(self.run_dir, task, "base"))
            measures["answer length in words (held-out prompts)"] = (mean_words(base), mean_words(tuned["task"]))
        general = before_after.perplexity_change(self.run_dir, model, self.tokenizer, self.general_text,
                                                 config.eval.batch_size)
        if general:
            measures["perplexity on general text"] = general
        summary = before_after.report(self.console, self.run_dir, self.sets, tuned, measures)
        warning = general and forgetting_warning(*general, config.eval.max_general_perplexity_rise)
        if warning:
            self.console.print(f"[yellow]warning:[/] {warning}")
        return summary


def example_terms(settings: Settings, batch: Batch, policy: losses.AnswerLogps,
                  reference: losses.AnswerLogps | None) -> LossTerms:
    """The loss and statistics of a batch, summed over its examples (idle rows weigh 0)."""
    weight = batch["weight"]
    n = len(weight)
    if not settings.paired:
        return kto_terms(settings, batch, policy, reference)
    chosen, rejected = policy.sums[:n], policy.sums[n:]
    chosen_mean, rejected_mean = policy.means[:n], policy.means[n:]
    if settings.loss == "dpo":
        pair = losses.dpo(chosen, rejected, reference.sums[:n], reference.sums[n:], settings.beta,
                          settings.label_smoothing)
    elif settings.loss == "ipo":
        counts = policy.counts.clamp(min=1)
        pair = losses.ipo(chosen_mean, rejected_mean, reference.sums[:n] / counts[:n], reference.sums[n:] / counts[n:],
                          settings.beta)
    elif settings.loss == "orpo":
        pair = losses.orpo(chosen_mean, rejected_mean, settings.beta)
    else:
        pair = losses.simpo(chosen_mean, rejected_mean, settings.beta, settings.gamma, settings.label_smoothing)
    terms = {PRIMARY: (pair.losses * weight).sum()}
    if settings.sft_weight > 0:
        terms["sft"] = (-chosen_mean * weight).sum()
    margin = pair.chosen_rewards - pair.rejected_rewards
    stats = {
        "reward_accuracy": (margin > 0).float(), "margin": margin, "chosen_reward": pair.chosen_rewards,
        "rejected_reward": pair.rejected_rewards, "chosen_logp": chosen.detach(), "rejected_logp": rejected.detach(),
        "prefers_chosen": (chosen_mean > rejected_mean).float(),
    }
    if reference is not None and reference.token_logps is not None:
        kl = losses.token_kl(policy, reference)
        stats["kl"] = (kl[:n] + kl[n:]) / 2
    return LossTerms(terms, {name: float((value * weight).sum()) for name, value in stats.items()})


def kto_terms(settings: Settings, batch: Batch, policy: losses.AnswerLogps,
              reference: losses.AnswerLogps) -> LossTerms:
    weight, desirable = batch["weight"], batch["desirable"]
    n = len(weight)
    per_example, rewards, z = losses.kto(policy.sums[:n], reference.sums[:n], policy.sums[n:].detach(),
                                         reference.sums[n:], desirable, weight, settings.beta,
                                         settings.desirable_weight, settings.undesirable_weight)
    good, bad = desirable.float() * weight, (~desirable).float() * weight
    stats = {"chosen_reward": float((rewards * good).sum()), "rejected_reward": float((rewards * bad).sum()),
             "desirable": float(good.sum()), "kl_estimate": float(z) * float(weight.sum()),
             "reward_accuracy": float((((rewards > 0) & desirable) | ((rewards < 0) & ~desirable)).float().mul(weight).sum())}
    if reference.token_logps is not None:
        stats["kl"] = float((losses.token_kl(policy, reference)[:n] * weight).sum())
    return LossTerms({PRIMARY: (per_example * weight).sum()}, stats)


def answer_rows(examples: list[PreferenceExample], index: int, paired: bool) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each column's row for one example: chosen, rejected; or rated, mismatched."""
    example = examples[index]
    answers = example.answers if paired else (example.answers[0], examples[(index + 1) % len(examples)].answers[0])
    prompt_labels = [IGNORE] * len(example.prompt)
    return [(example.prompt + a.input_ids, prompt_labels + a.labels) for a in answers]


def unit_length(examples: list[PreferenceExample], index: int, paired: bool) -> int:
    return max(len(ids) for ids, _ in answer_rows(examples, index, paired))


def collate(examples: list[PreferenceExample], units: list[int], paired: bool, pad_id: int) -> Batch:
    """Rows column by column (all first answers, then all second ones), right-padded to one width."""
    per_unit = [answer_rows(examples, i, paired) for i in units]
    rows = [unit[column] for column in range(2) for unit in per_unit]
    width = -(-max(len(ids) for ids, _ in rows) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
             "weight": torch.ones(len(units))}
    if not paired:
        batch["desirable"] = torch.tensor([bool(examples[i].desirable) for i in units])
    return batch


def precomputed_reference(method: PreferenceMethod, model, resuming: bool) -> dict[str, torch.Tensor]:
    """The starting weights' answer log-probabilities for every train and validation example, computed
    once before the first step and cached by the data's tokens and the start; a resumed run reads them."""
    config = method.config
    start = str(config.model.init_from or config.model.name)
    key = hashlib.sha256(f"{method.data.fingerprint()}|{start}|{config.method}|{config.model.dtype}|"
                         f"{method.settings.paired}".encode()).hexdigest()[:24]
    path = home() / "datasets" / "reference-logps" / f"{key}.pt"
    if path.is_file():
        method.console.print(f"reference log-probabilities from the cache: {path}")
        return torch.load(path)
    if resuming:
        from tuneforge.errors import DataError

        raise DataError(f"the reference log-probabilities of this run ({path}) are gone, and a resumed run no longer "
                        "holds its starting weights; start the run again")
    method.console.print("reference log-probabilities of the starting weights (computed once, then cached) ...")
    cached = {}
    model.eval()
    with torch.no_grad(), method.accelerator.autocast():
        for split, examples in (("train", method.data.train), ("validation", method.data.validation)):
            columns = []
            for start_at in range(0, len(examples), method.config.eval.batch_size):
                units = list(range(start_at, min(start_at + method.config.eval.batch_size, len(examples))))
                batch = {k: v.to(method.accelerator.device) for k, v in
                         collate(examples, units, method.settings.paired, method.tokenizer.pad_token_id).items()}
                columns.append(losses.answer_logps(model, batch).sums.float().cpu().reshape(2, -1).T)
            cached[split] = torch.cat(columns) if columns else torch.zeros(0, 2)
    model.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(cached, tmp)
    tmp.replace(path)
    return cached


def probe_sets(config: RunConfig, data: PreferenceData) -> list[before_after.ProbeSet]:
    """eval.prompts (or the first held-out prompts) and the general check, answered before and after."""
    sets = before_after.probe_sets(config.eval, replies=True)
    if config.eval.prompts is None and data.prompts.get("validation"):
        probes = [Probe(last_user(messages)) for messages in data.prompts["validation"][:HELD_OUT_PROMPTS]]
        sets.insert(0, before_after.ProbeSet("task", "held-out prompts", "expected answer given", probes))
    return sets


def last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def mean_words(answers: list[str]) -> float:
    return sum(len(a.split()) for a in answers) / max(len(answers), 1)


def held_out_measures(run_dir: Path, paired: bool) -> dict[str, tuple[float | None, float | None]]:
    """Held-out pair figures of the first evaluation (the start) and the last (the tuned model)."""
    evaluations = [r for r in read_metrics(run_dir) if "eval_loss" in r]
    if not evaluations:
        return {}
    first, last = evaluations[0], evaluations[-1]
    names = {"eval_loss": "held-out loss", "eval_reward_accuracy": "held-out reward accuracy",
             "eval_margin": "held-out reward margin"}
    if paired:
        names["eval_prefers_chosen"] = "held-out pairs where chosen is likelier (per token)"
    return {label: (first.get(key), last.get(key)) for key, label in names.items() if key in last}


def closing(result) -> list[str]:
    """What `tuneforge train` prints after a finished run."""
    lines = []
    if result.eval_loss_before is not None and result.eval_loss_after is not None:
        lines.append(f"held-out preference loss: before {result.eval_loss_before:.4f} -> after {result.eval_loss_after:.4f}")
    return [*lines, f"talk to it: tuneforge chat {result.run_dir}", f"figures: {result.run_dir / 'eval' / 'summary.json'}"]

