"""`tuneforge models register | list | show | promote | rollback` and `tuneforge retrain`: the registry's commands.

The `models` group is the registry's: `models list` and `models import` of embedded and cached
models are the models package's (models/commands.py), added to the group here, and `list` also
prints the registry's versions when a registry file exists (it never creates one).
Promotion refuses a version whose gates failed unless forced, because the alias is what a
server serves: `tuneforge serve registry:production` picks the change up without a restart.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.evaluate.commands import GATE_FAILED_EXIT
from tuneforge.models import commands as model_commands
from tuneforge.registry.retrain import DEFAULT_REPLAY_RATIO, run_retrain
from tuneforge.registry.store import (
    ALIASES, RegistryError, Version, alias_history, aliases, get_version, list_versions, open_registry,
    registry_path, resolve, rollback, set_alias,
)

ACTIONS = ("register", "show", "promote", "rollback")


def add_parsers(commands) -> None:
    """`retrain`, and the `models` group: the models package's list and import, then the registry's actions."""
    add_retrain(commands)
    add_models(commands)


def add_retrain(commands) -> None:
    retrain = commands.add_parser(
        "retrain", help="fine-tune the production version further on curated data; promote it if it wins",
        description="Fine-tune a registered version (default: production) further on curated data mixed with a "
        "replay share of its original training data, evaluate it against that version on the same held-out data "
        "with the configured gates and the forgetting check, register it, and promote it to production only if "
        "it wins (else it becomes staging; RUN/retrain_report.json says why). Exit 0: promoted; 3: not promoted.")
    retrain.add_argument("--from", dest="source", default="production", metavar="VERSION_OR_ALIAS",
                         help="the version to start from (default: production)")
    retrain.add_argument("--data", action="append", required=True, metavar="FILE",
                         help="curated training data (repeatable), e.g. from tuneforge curate")
    registry_option(retrain)
    retrain.add_argument("--replay-ratio", type=float, default=DEFAULT_REPLAY_RATIO, metavar="R",
                         help="fraction of the training records replayed from the version's own training data "
                         "(default 0.33: one for every two curated records; 0 turns replay off)")
    retrain.add_argument("--validation", action="append", default=[], metavar="FILE",
                         help="held-out data to add to the version's own validation data (repeatable)")
    retrain.add_argument("--gate", dest="gates", action="append", default=[], metavar="GATE",
                         help='a gate besides eval.gates, e.g. "token_f1 >= base + 0.05" (repeatable)')
    retrain.add_argument("--output-dir", type=Path, metavar="DIR",
                         help="the new run's directory (default: runs/retrain-VERSION-TIME)")
    retrain.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key of the new run file, e.g. train.max_steps=50 (repeatable)")
    retrain.add_argument("--no-promote", action="store_true",
                         help="register the new version as staging even if it wins")
    retrain.add_argument("--preference", choices=["auto", "dpo", "kto", "off"], default="auto",
                         help="how curated preference pairs (FILE.preference.jsonl from tuneforge curate) train: dpo "
                         "(the pairs by DPO, production's log-probs the reference), kto (pairs and approved answers as "
                         "rated replies), off (supervised only); auto (default): dpo when a --data file holds pairs")
    retrain.set_defaults(func=run_retrain)


def add_models(commands) -> None:
    models = commands.add_parser("models", help="list, import and register models; promote, roll back",
                                 description="List or import models; the model registry's versions and aliases.")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    model_commands.add_parsers(models_commands)  # list, import
    listing = models_commands.choices["list"]
    registry_option(listing)
    listing.set_defaults(func=run_list)

    register = models_commands.add_parser(
        "register", help="add a finished run to the model registry",
        description="Register a finished run directory as a new model version: its base model, data hashes, run "
        "file, evaluation results and gate outcome (from RUN/eval/*/gates.json, written by tuneforge eval).")
    register.add_argument("run", type=Path, metavar="RUN")
    register.add_argument("--parent", metavar="VERSION", help="the version this run was fine-tuned from")
    register.add_argument("--note", help="a free-text note stored with the version")
    register.add_argument("--promote", choices=ALIASES, metavar="ALIAS", help="also point ALIAS (production|staging) at it")
    register.add_argument("--force", action="store_true", help="with --promote: promote even if its gates failed")
    show = models_commands.add_parser("show", help="one version: lineage, data, config, eval, gates, aliases",
                                      description="Show a version (or the version an alias points at).")
    show.add_argument("version", metavar="VERSION_OR_ALIAS")
    promote = models_commands.add_parser(
        "promote", help="point an alias (production, staging) at a version",
        description="Point production or staging at a version; a server serving that alias switches to it. "
        "A version whose gates failed is refused unless --force.")
    promote.add_argument("version", metavar="VERSION_OR_ALIAS")
    promote.add_argument("--to", required=True, choices=ALIASES, dest="alias")
    promote.add_argument("--force", action="store_true", help="promote even if the version's gates failed")
    back = models_commands.add_parser("rollback", help="point an alias back at the version it held before",
                                      description="Point an alias (default production) back at its previous version.")
    back.add_argument("alias", nargs="?", default="production", metavar="ALIAS")
    for parser in (register, show, promote, back):
        registry_option(parser)
        parser.set_defaults(func=run_registry)


def registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, metavar="PATH",
                        help="the registry file (default: $TUNEFORGE_REGISTRY, else ./tuneforge-registry.db)")


def run_list(args, console: Console) -> int:
    """`models list`: the embedded and cached models, then the registered versions."""
    model_commands.run_list(args, console)
    return run_registry(args, console)


def run_registry(args, console: Console) -> int:
    """One registry action (or the registry part of `models list`); results go to standard output."""
    out = Console(soft_wrap=True)
    path = registry_path(args.registry)
    if args.models_command == "list":
        if not path.is_file():
            say(out, f"no model registry at {path} (add a run with: tuneforge models register RUN)")
            return 0
        conn = open_registry(path, create=False)
        print_versions(out, conn, path)
        return 0
    conn = open_registry(path, create=args.models_command == "register")
    try:
        match args.models_command:
            case "register":
                from tuneforge.registry.runs import register_run

                version = register_run(conn, args.run, parent=args.parent, note=args.note)
                say(out, f"registered {version.id}: {version.path} ({describe(version)})")
                return promote(conn, version, args.promote, args.force, out, console) if args.promote else 0
            case "show":
                show(out, conn, resolve(conn, args.version))
                return 0
            case "promote":
                return promote(conn, resolve(conn, args.version), args.alias, args.force, out, console)
            case "rollback":
                before, after = rollback(conn, args.alias)
                say(out, f"{args.alias}: {before} -> {after} (rolled back)")
                return 0
    finally:
        conn.close()
    raise RegistryError(f"unknown models action {args.models_command!r}")


def promote(conn: sqlite3.Connection, version: Version, alias: str, force: bool, out: Console, console: Console) -> int:
    """Point `alias` at `version`; a version whose gates failed is refused (exit 3) unless forced."""
    if version.gate_outcome == "failed" and not force:
        failed = [g.get("reason", g.get("gate")) for g in version.gate.get("gates", []) if not g.get("passed")]
        console.print(f"[bold red]refused:[/] {version.id}'s gates failed ({'; '.join(failed)}); not promoted to "
                      f"{alias}. Pass --force to promote it anyway.", highlight=False)
        return GATE_FAILED_EXIT
    current = aliases(conn).get(alias)
    if current == version.id:
        say(out, f"{alias} is already {version.id}")
        return 0
    previous = set_alias(conn, alias, version.id)
    forced = " (forced past failed gates)" if version.gate_outcome == "failed" else ""
    unchecked = " (no gates were checked)" if version.gate_outcome == "none" else ""
    say(out, f"{alias}: {previous or '(none)'} -> {version.id}{forced}{unchecked}")
    return 0


def say(out: Console, text: str) -> None:
    out.print(text, markup=False, highlight=False)


def describe(version: Version) -> str:
    parent = f", parent {version.parent}" if version.parent else ""
    return f"base {version.base_model}, {version.method}{parent}, gates {version.gate_outcome}"


def when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


def number(value) -> str:
    return "-" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.4g}"


def key_figures(version: Version) -> tuple[str, str]:
    """(final validation loss, perplexity on general text) of a version, as shown by `models list`."""
    general = version.eval.get("summary", {}).get("perplexity on general text", {})
    return number(version.eval.get("validation_loss")), number(general.get("tuned") if isinstance(general, dict) else None)


def print_versions(out: Console, conn: sqlite3.Connection, path: Path) -> None:
    versions = list_versions(conn)
    if not versions:
        say(out, f"model registry {path}: no versions yet (add a run with: tuneforge models register RUN)")
        return
    named: dict[str, list[str]] = {}
    for alias, version_id in aliases(conn).items():
        named.setdefault(version_id, []).append(alias)
    table = Table(title=f"model registry ({path})")
    for column in ("version", "aliases", "base model", "method", "parent", "gates", "val loss", "ppl general",
                   "created"):
        table.add_column(column, overflow="fold")
    for version in versions:
        loss, general = key_figures(version)
        table.add_row(version.id, ", ".join(named.get(version.id, [])) or "-", version.base_model, version.method,
                      version.parent or "-", version.gate_outcome, loss, general, when(version.created))
    out.print(table)


def lineage(conn: sqlite3.Connection, version: Version) -> list[Version]:
    """The version, its parent, its parent's parent, ... (a cycle cannot occur: parents are registered first)."""
    chain = [version]
    while chain[-1].parent:
        chain.append(get_version(conn, chain[-1].parent))
    return chain


def show(out: Console, conn: sqlite3.Connection, version: Version) -> None:
    held = [alias for alias, version_id in aliases(conn).items() if version_id == version.id]
    say(out, f"{version.id}" + (f" ({', '.join(held)})" if held else ""))
    say(out, f"  path: {version.path}")
    say(out, f"  created: {when(version.created)}")
    say(out, f"  base model: {version.base_model} ({version.method})")
    chain = lineage(conn, version)
    say(out, f"  lineage: {' <- '.join(v.id for v in chain)} <- base {chain[-1].base_model}")
    if version.note:
        say(out, f"  note: {version.note}")
    say(out, "data (sha256):")
    for file, digest in version.dataset_hashes.items():
        say(out, f"  {digest[:16]}  {file}")
    show_eval(out, version.eval)
    say(out, f"gates: {version.gate_outcome}" + (f" ({version.gate.get('data')})" if version.gate else ""))
    for gate in (version.gate or {}).get("gates", []):
        say(out, f"  {gate.get('reason', gate.get('gate'))}")
    say(out, "alias history:")
    entries = [e for e in alias_history(conn) if version.id in (e["version"], e["previous"])]
    for entry in entries:
        say(out, f"  {when(entry['created'])}  {entry['name']}: {entry['previous'] or '(none)'} -> {entry['version']} "
                 f"({entry['action']})")
    if not entries:
        say(out, "  (never promoted)")
    say(out, "config:")
    for line in (version.config or "(no run file)").splitlines():
        say(out, f"  {line}")


def show_eval(out: Console, evidence: dict) -> None:
    say(out, "eval:")
    if "validation_loss" in evidence:
        say(out, f"  final validation loss: {number(evidence['validation_loss'])}")
    for label, row in evidence.get("summary", {}).items():
        if isinstance(row, dict):
            say(out, f"  {label}: before training {show_value(row.get('base'))} -> after {show_value(row.get('tuned'))}")
    for data_name, sides in evidence.get("evaluations", {}).items():
        for side, metrics in sides.items():
            figures = ", ".join(f"{name} {number(value)}" for name, value in metrics.items())
            say(out, f"  {data_name} / {side}: {figures}")
    retrain = evidence.get("retrain")
    if retrain:
        verdict = "promoted to production" if retrain.get("promoted") else "not promoted"
        say(out, f"  retrain from {retrain.get('parent')}: {verdict}" +
            (f" ({'; '.join(retrain.get('reasons', []))})" if retrain.get("reasons") else ""))


def show_value(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}/{value[1]}"
    return number(value) if value is not None else "-"

