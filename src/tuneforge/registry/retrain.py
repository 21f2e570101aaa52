"""`tuneforge retrain`: train the production version further on curated data; promote it only if it wins.

The new run is the production run's own run file with four changes: it starts from production's
weights (`model.init_from`: a LoRA version's adapter is loaded on the same base and trained
further), it trains on the curated file, it replays a share of the data production was trained
on (its `data.train` files, and its own replay files when it was itself a retrain) so the new
data does not overwrite the old task, and it validates on production's validation data (plus
any `--validation`), so the comparison is like for like.  `train.kl_to_base` is turned off: its
reference would be the original base, not production.

Then the candidate and production answer the same held-out records (evaluate/compare.py, one
model in memory at a time), and it is promoted to production only when
- every configured gate passes (`eval.gates` and `--gate`; `base` in a gate is the original base
  model, as in `tuneforge eval`, so a gate means the same for every version),
- it beats production on the primary metric (`eval.best_metric`: the validation loss unless set),
- and the forgetting check holds: its perplexity on general text rose no more than
  `eval.max_general_perplexity_rise` above production's.
Otherwise it becomes staging, and RUN/retrain_report.json (and the terminal) say why.  Either
way it is registered, with production as its parent.

Curated preference pairs (FILE.preference.jsonl) train by DPO, or everything by KTO, with
`--preference` (registry/preference_retrain.py); the comparison with production is the same.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from tuneforge.errors import ConfigError
from tuneforge.registry.preference_retrain import preference_mode, with_preference
from tuneforge.registry.store import Version, aliases, open_registry, registry_path, resolve, set_alias
from tuneforge.train.signals import INTERRUPT_EXIT

DEFAULT_REPLAY_RATIO = 1 / 3  # one replayed record for every two curated ones
RUN_FILE = "retrain.yaml"
REPORT = "retrain_report.json"  # in the new run's directory; registry/runs.py stores it with the version
NOT_PROMOTED_EXIT = 3  # as a failed gate


@dataclass
class Decision:
    primary: str  # the metric compared with production
    lower_is_better: bool
    production: float
    candidate: float
    gates: list[dict] = field(default_factory=list)
    perplexity_general: tuple[float, float] = (math.nan, math.nan)  # (production, candidate)
    reasons: list[str] = field(default_factory=list)  # why it does not win; empty when it does

    @property
    def wins(self) -> bool:
        return not self.reasons


def run_retrain(args, console: Console) -> int:
    for path in [*args.data, *args.validation]:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: file not found (relative paths are read from {Path.cwd()})")
    if not 0.0 <= args.replay_ratio < 1.0:
        raise ConfigError(f"--replay-ratio {args.replay_ratio}: must be at least 0 and below 1")
    conn = open_registry(registry_path(args.registry), create=False)
    try:
        version = resolve(conn, args.source)
        output_dir = (args.output_dir or Path("runs") / f"retrain-{version.id}-{time.strftime('%Y%m%d-%H%M%S')}")
        mode = preference_mode(args.preference, args.data)
        config, held_out = retrain_config(version, args.data, args.validation, args.replay_ratio, output_dir.resolve(),
                                          args.overrides, console, mode)
        from tuneforge.train.driver import train

        console.print(f"retraining {version.id} ({version.path}) on {', '.join(args.data)} -> {config.output_dir}",
                      highlight=False)
        result = train(config, console=console)
        if result.interrupted_by:
            console.print(f"stopped by {result.interrupted_by}; nothing registered. Continue the training with "
                          f"`tuneforge train {config.output_dir / 'config.yaml'} --resume`, then register it with "
                          f"`tuneforge models register {config.output_dir} --parent {version.id}`.", highlight=False)
            return INTERRUPT_EXIT[result.interrupted_by]
        decision = compare_with(version, config, args.gates, console, held_out)
        return conclude(conn, version, config, decision, args.data, args.no_promote, console)
    finally:
        conn.close()


def retrain_config(version: Version, curated: list[str], validation: list[str], replay_ratio: float,
                   output_dir: Path, overrides: list[str], console: Console, mode: str = "off"):
    """(the new run, loaded with the --set overrides like any run file, and the held-out chat files the candidate
    and production are compared on); the run file is written to OUTPUT/retrain.yaml.  A preference retrain
    (registry/preference_retrain.py) trains the curated pairs and holds none of them out."""
    from tuneforge.config import load_config
    from tuneforge.train.run_dir import prepare_run_dir

    raw = production_run_file(version)
    data = raw.setdefault("data", {})
    held_out = list(dict.fromkeys([*version_sources(data, "validation"), *[str(Path(p).resolve()) for p in validation]]))
    if not held_out:
        raise ConfigError(f"{version.id}'s run file has no data.validation files (it held out data.val_split of its "
                          "training data), so there is nothing to compare on like for like: name held-out data "
                          "with --validation FILE")
    pool = replay_pool(version, data) if replay_ratio > 0 else []  # before data.train becomes the curated data
    data["train"] = [str(Path(p).resolve()) for p in curated]
    data["validation"] = held_out
    data["replay"] = {"ratio": replay_ratio, "data": pool} if pool else None
    raw.setdefault("model", {})["init_from"] = version.path
    train_section = raw.setdefault("train", {})
    if train_section.get("kl_to_base"):
        console.print(f"note: train.kl_to_base ({train_section['kl_to_base']}) is off for a retrain: its reference "
                      "would be the original base model, not the version it starts from", highlight=False)
    train_section["kl_to_base"] = 0.0
    raw["output_dir"] = str(output_dir)
    prepare_run_dir(output_dir, resume=False, overwrite=False, lock=False)  # refuses a directory that holds a run
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    with_preference(raw, mode, curated, output_dir, console)
    path = output_dir / RUN_FILE
    write_atomic(path, yaml.safe_dump(raw, sort_keys=False))
    try:
        return load_config(path, overrides), held_out
    except ConfigError:  # a bad --set leaves nothing behind
        path.unlink()
        if created:
            output_dir.rmdir()
        raise


def production_run_file(version: Version) -> dict:
    text = version.config
    if text is None and (Path(version.path) / "config.yaml").is_file():
        text = (Path(version.path) / "config.yaml").read_text(encoding="utf-8")
    if text is None:
        raise ConfigError(f"{version.id} ({version.path}) has no run file; retrain needs a version registered "
                          "from a run directory")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or raw.get("task", "chat") not in ("chat", "preference", "kto"):
        raise ConfigError(f"{version.id}: retrain supports chat runs only (its run file says task: "
                          f"{raw.get('task') if isinstance(raw, dict) else '?'})")
    return raw


def replay_pool(version: Version, data: dict) -> list[str]:
    """The files the version learned from: its data.train (expanded) and, for a retrain, its replay files."""
    from tuneforge.data.readers import expand
    from tuneforge.errors import DataError

    sources = [*version_sources(data, "train"), *((data.get("replay") or {}).get("data") or [])]
    files = []
    for source in sources:
        if str(source).startswith("hf:"):
            raise ConfigError(f"{version.id} trained on hub data ({source}), which cannot be replayed from a file; "
                              "pass --replay-ratio 0, or save that data to a file and retrain from a version that names it")
        try:
            files += expand(source)
        except DataError as exc:
            raise ConfigError(f"{version.id}'s training data is needed for replay: {exc}; restore it, or pass "
                              "--replay-ratio 0") from None
    return list(dict.fromkeys(files))


def version_sources(data: dict, split: str) -> list[str]:
    value = data.get(split) or []
    return [value] if isinstance(value, str) else list(value)


def compare_with(version: Version, config, extra_gates: list[str], console: Console,
                 held_out: list[str] | None = None) -> Decision:
    """Evaluate production and the candidate (and the base, for base-relative gates) on the validation data."""
    from tuneforge.data.formats import read_records
    from tuneforge.evaluate import compare, gates
    from tuneforge.evaluate.evaluator import builtin_general_text, eval_examples, load_eval_records, save_results
    from tuneforge.models.generate import Sampling
    from tuneforge.models.load import load_tokenizer, saved_model_dir

    settings, run_dir = config.eval, config.output_dir
    gate_list = [gates.parse_gate(text) for text in [*settings.gates, *extra_gates]]
    held_out = held_out or config.data.validation
    records = load_eval_records(held_out)
    general = read_records(settings.general_text or builtin_general_text())
    sides = {"production": version.path, "tuned": str(run_dir)}
    if any(gate.relative for gate in gate_list):
        sides = {"base": config.model.name, **sides}
    evals = compare.evaluate_references(list(sides.values()), records, settings.metrics,
                                        Sampling(max_new_tokens=settings.max_new_tokens), settings.batch_size, console,
                                        general, load_tokenizer(saved_model_dir(run_dir)))
    results = dict(zip(sides, evals))
    out = run_dir / "eval" / Path(held_out[0]).stem
    examples = eval_examples(records)
    for side, result in results.items():
        result.name = {"base": "base model", "production": f"production ({version.id})", "tuned": "retrained"}[side]
        save_results(out / side, examples, result)
    compare.print_summary(console, evals, title=f"retrained vs {version.id} on "
                          f"{', '.join(Path(d).name for d in held_out)}")
    checked = gates.check_gates(gate_list, results["tuned"].metrics, results["base"].metrics if "base" in results else None)
    if checked:
        gates.print_gates(console, checked)
        gates.write_gates(out / "gates.json", checked)
    return decide(results["production"].metrics, results["tuned"].metrics, checked, settings.best_metric,
                  settings.max_general_perplexity_rise, version.id)


def decide(production: dict, candidate: dict, checked: list, best_metric: str, max_rise: float,
           version_id: str) -> Decision:
    """Wins = gates pass, beats production on the primary metric, and no forgetting beyond the allowed rise."""
    from tuneforge.evaluate.compare import LOWER_IS_BETTER
    from tuneforge.evaluate.evaluator import forgetting_warning

    primary = best_metric.removeprefix("eval_")
    lower = primary in LOWER_IS_BETTER
    before, after = production.get(primary, math.nan), candidate.get(primary, math.nan)
    general = (production.get("perplexity_general", math.nan), candidate.get("perplexity_general", math.nan))
    decision = Decision(primary, lower, before, after, [gate_record(r) for r in checked], general)
    failed = [r.reason for r in checked if not r.passed]
    if failed:
        decision.reasons.append(f"gates failed: {'; '.join(failed)}")
    if math.isnan(before) or math.isnan(after):
        decision.reasons.append(f"{primary} (eval.best_metric) was not measured for both models")
    elif not (after < before if lower else after > before):
        decision.reasons.append(f"{primary} {after:.4g} does not beat {version_id}'s {before:.4g} "
                                f"({'lower' if lower else 'higher'} is better)")
    warning = forgetting_warning(*general, max_rise)
    if warning:
        decision.reasons.append(f"forgetting check against {version_id}: {warning}")
    return decision


def gate_record(result) -> dict:
    return {"gate": result.gate.text, "passed": result.passed, "reason": result.reason}


def conclude(conn, version: Version, config, decision: Decision, curated: list[str], no_promote: bool,
             console: Console) -> int:
    """Register the candidate, point production (if it wins) or staging at it, and write the report."""
    from tuneforge.registry.runs import register_run

    run_dir = config.output_dir
    live = aliases(conn).get("production")
    reasons = list(decision.reasons)
    if decision.wins and live not in (None, version.id):  # promoted elsewhere meanwhile, or --from another version
        reasons.append(f"production is {live}, not {version.id} that it was compared with; retrain from production "
                       "to compete with it")
    promote = not reasons and not no_promote
    report = {
        "parent": version.id, "run_dir": str(run_dir), "curated": [str(Path(p).resolve()) for p in curated],
        "replay": config.data.replay.model_dump(mode="json") if config.data.replay else None,
        "validation": config.data.validation,
        "primary_metric": {"name": decision.primary, "lower_is_better": decision.lower_is_better,
                           "production": finite(decision.production), "candidate": finite(decision.candidate)},
        "perplexity_general": {"production": finite(decision.perplexity_general[0]),
                               "candidate": finite(decision.perplexity_general[1]),
                               "max_rise": config.eval.max_general_perplexity_rise},
        "gates": decision.gates, "wins": decision.wins, "promoted": promote, "reasons": reasons,
    }
    write_atomic(run_dir / REPORT, json.dumps(report, indent=2) + "\n")
    verdict = "promoted to production" if promote else "won; kept in staging (--no-promote)" if not reasons else "not promoted"
    new = register_run(conn, run_dir, parent=version.id, note=f"retrain of {version.id} on "
                       f"{', '.join(Path(p).name for p in curated)}: {verdict}")
    alias = "production" if promote else "staging"
    previous = set_alias(conn, alias, new.id)
    report |= {"version": new.id, "alias": alias}
    write_atomic(run_dir / REPORT, json.dumps(report, indent=2) + "\n")
    print_verdict(console, version, new, decision, reasons, alias, previous, live)
    return 0 if not reasons else NOT_PROMOTED_EXIT


def print_verdict(console: Console, version: Version, new: Version, decision: Decision, reasons: list[str],
                  alias: str, previous: str | None, live: str | None) -> None:
    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, markup=False, highlight=False)

    say(f"retrain of {version.id}: registered {new.id} ({new.path})")
    say(f"  {decision.primary}: {version.id} {decision.production:.4g} -> {new.id} {decision.candidate:.4g} "
        f"({'lower' if decision.lower_is_better else 'higher'} is better)")
    before, after = decision.perplexity_general
    say(f"  perplexity on general text: {version.id} {before:.4g} -> {new.id} {after:.4g}")
    if decision.gates:
        say(f"  gates: {sum(g['passed'] for g in decision.gates)} of {len(decision.gates)} passed")
    if reasons:
        say(f"not promoted: {alias} {previous or '(none)'} -> {new.id}; production stays {live or 'unset'}",
            "bold yellow")
        for reason in reasons:
            say(f"  - {reason}", "yellow")
    elif alias == "production":
        say(f"promoted: production {previous or '(none)'} -> {new.id}", "bold green")
    else:
        say(f"{new.id} wins but --no-promote: staging {previous or '(none)'} -> {new.id}", "bold green")
    say(f"report: {new.path}/{REPORT}")


def finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
