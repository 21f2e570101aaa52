"""`tuneforge monitor report|drift` and `tuneforge curate`: their options, and reading the request log for them.

All three only read the log (`store.connect(path, readonly=True)`), so they run beside a live
server. --since / --until take an ISO date or time (UTC unless it carries an offset) or an age
such as 30m, 24h, 7d, 2w.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from tuneforge.errors import ConfigError
from tuneforge.monitor.requestlog import DEFAULT_LOG_DB

DRIFT_EXIT = 3  # as a failed gate in `tuneforge eval`
NOTHING_CURATED_EXIT = 1
AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WHEN_HELP = "an ISO date/time (UTC unless it has an offset), or an age: 30m, 24h, 7d, 2w"


def parse_when(text: str | None, flag: str, now: float | None = None) -> float | None:
    """--since/--until as unix time: an ISO date or time, or an age before `now`."""
    if text is None:
        return None
    age = AGE.match(text)
    if age:
        return (time.time() if now is None else now) - float(age.group(1)) * UNIT_S[age.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected {WHEN_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def add_window(parser) -> None:
    parser.add_argument("--db", type=Path, default=Path(DEFAULT_LOG_DB),
                        help=f"the request log tuneforge serve writes (default ./{DEFAULT_LOG_DB})")
    parser.add_argument("--since", metavar="WHEN", help=f"only requests from then on; {WHEN_HELP}")
    parser.add_argument("--until", metavar="WHEN", help="only requests before then; same forms")


def add_parsers(commands) -> None:
    """`monitor` (report, drift) and `curate`, each run by the function of its name."""
    add_monitor(commands)
    add_curate(commands)


def add_monitor(commands) -> None:
    monitor = commands.add_parser("monitor", help="report on, or check drift in, the served model's request log",
                                  description="Read the request log that tuneforge serve writes.")
    actions = monitor.add_subparsers(dest="monitor_command", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report", help="traffic, latency, errors, tokens and feedback per model version",
        description="Traffic over time, latency and time-to-first-token percentiles, error rate by status, token "
        "usage, feedback rate and approval, per model version and overall, as terminal tables; --out DIR also "
        "writes DIR/index.html with PNG charts and DIR/report.json.")
    report.set_defaults(func=run_report)
    add_window(report)
    report.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/index.html, charts and report.json")
    from tuneforge.monitor.drift import DEFAULT_THRESHOLDS

    defaults = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_THRESHOLDS.items())
    drift = actions.add_parser(
        "drift", help="compare production prompts with the training data's",
        description="Compare the prompts of logged requests with the training data's prompts: length distribution "
        "(Kolmogorov-Smirnov), word unigram+bigram distribution (Jensen-Shannon divergence, base 2) and, with "
        "--model, the share of prompts more surprising to the model (perplexity) than 95% of the training prompts. "
        "Each signal's drift score is its production score minus the score of same-size samples of the training "
        "prompts held out from the rest, so small samples are not flagged for being small. Exits 3 when a signal "
        "is flagged.")
    drift.set_defaults(func=run_drift)
    add_window(drift)
    drift.add_argument("--data", action="append", default=[], metavar="TRAIN_FILE",
                       help="training data: a file, folder or glob (repeatable)")
    drift.add_argument("--config", type=Path, metavar="RUN.yaml",
                       help="take the training data (and its format, columns, roles) from a run file or run directory")
    drift.add_argument("--model", metavar="MODEL_OR_RUN",
                       help="measure lengths in its tokens and the surprise signal with it (loads the model)")
    drift.add_argument("--threshold", dest="thresholds", action="append", default=[], metavar="SIGNAL=VALUE",
                       help=f"flag a signal whose drift score exceeds VALUE (defaults: {defaults})")
    drift.add_argument("--out", type=Path, metavar="FILE.json", help="also write the result as JSON")


def add_curate(commands) -> None:
    curate = commands.add_parser(
        "curate", help="turn rated production traffic into training data",
        description="Approved answers (latest rating +1) and corrections become SFT chat records in FILE; a "
        "rejected answer with a correction also becomes a preference pair in FILE's .preference.jsonl sibling. "
        "PII is redacted, duplicates of the --train data and of each other are dropped, and FILE.manifest.json "
        "lists each record's source requests and what was skipped, and why. Exits 1 when nothing was curated.")
    curate.set_defaults(func=run_curate)
    add_window(curate)
    curate.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl", help="the curated chat records")
    curate.add_argument("--train", action="append", default=[], metavar="FILE",
                        help="existing training data to deduplicate against (repeatable)")
    curate.add_argument("--no-redact", dest="redact", action="store_false",
                        help="keep emails, phone numbers, IPs and card numbers as logged")
    curate.add_argument("--overwrite", action="store_true", help="replace existing curated files")


def read_log(args):
    """(requests, feedback, since, until) from --db within --since/--until."""
    from tuneforge.monitor.store import connect, read_feedback, read_requests

    now = time.time()
    since, until = parse_when(args.since, "--since", now), parse_when(args.until, "--until", now)
    conn = connect(args.db, readonly=True)
    try:
        return read_requests(conn, since, until), read_feedback(conn), since, until
    finally:
        conn.close()


def run_report(args, console: Console) -> int:
    from tuneforge.monitor.report import build_report, print_report, write_html

    requests, feedback, since, until = read_log(args)
    report = build_report(requests, feedback, since, until)
    if not requests:
        console.print(f"{args.db}: no requests logged{window_text(args)}; nothing to report")
    else:
        print_report(Console(), report)
    if args.out:
        console.print(f"report: {write_html(args.out, report)}")
    return 0


def window_text(args) -> str:
    parts = [f"since {args.since}" if args.since else "", f"until {args.until}" if args.until else ""]
    return (" " + " ".join(p for p in parts if p)) if any(parts) else ""


def training_sources(args):
    """(sources, format, mapping) from --data, else from --config (a run file, or a run directory's config.yaml)."""
    from tuneforge.data.formats import Mapping

    if args.data:
        return args.data, "auto", Mapping()
    if args.config is None:
        raise ConfigError("name the training data: --data TRAIN_FILE (repeatable) or --config RUN.yaml")
    from tuneforge.config import load_config

    path = args.config / "config.yaml" if args.config.is_dir() else args.config
    if not path.is_file():
        raise ConfigError(f"--config {args.config}: no run file here")
    data = load_config(path).data
    return data.train, data.format, Mapping(data.columns, data.roles)


def run_drift(args, console: Console) -> int:
    from tuneforge.monitor import drift

    thresholds = drift.parse_thresholds(args.thresholds)
    sources, fmt, mapping = training_sources(args)
    requests, _, _, _ = read_log(args)
    production = drift.production_prompts(requests)
    if not production:
        console.print(f"{args.db}: no prompts logged{window_text(args)}; nothing to compare")
        return 0
    train = drift.training_prompts(sources, fmt, mapping)
    if len(train) < drift.MIN_TRAINING_PROMPTS:
        raise ConfigError(f"{', '.join(map(str, sources))}: {len(train)} training prompts; the drift check needs "
                          f"at least {drift.MIN_TRAINING_PROMPTS} to measure the training data against itself")
    model = tokenizer = None
    if args.model:
        from tuneforge.models.load import load_for_inference

        console.print(f"loading {args.model} ...")
        model, tokenizer = load_for_inference(args.model)
    report = drift.check_drift(train, production, thresholds, model, tokenizer)
    drift.print_report(Console(), report)
    if args.out:
        drift.write_json(args.out, report, {"db": str(args.db), "since": args.since, "until": args.until,
                                            "training_data": [str(s) for s in sources], "model": args.model})
        console.print(f"written: {args.out}")
    return DRIFT_EXIT if report.drifted else 0


def run_curate(args, console: Console) -> int:
    from tuneforge.monitor.curate import checked_outputs, curate, write_curation

    checked_outputs(args.out, args.overwrite)  # a wrong or taken --out fails before the log is read
    requests, feedback, _, _ = read_log(args)
    result = curate(requests, feedback, args.train, redact=args.redact)
    for reason, count in sorted(result.skipped.items()):
        console.print(f"  skipped {count:,}: {reason}", highlight=False)
    if not result.chat and not result.preference:
        console.print(f"{args.db}: {len(requests):,} requests{window_text(args)}, nothing to curate "
                      "(only rated answers and corrections become training data); nothing written")
        return NOTHING_CURATED_EXIT
    meta = {"db": str(args.db), "since": args.since, "until": args.until, "train": [str(t) for t in args.train],
            "redacted": args.redact}
    chat, preference, manifest = write_curation(args.out, result, meta, args.overwrite)
    if result.chat:
        console.print(f"{len(result.chat):,} chat records -> {chat}")
    if result.preference:
        console.print(f"{len(result.preference):,} preference pairs -> {preference}")
    if result.redacted:
        console.print("PII redacted: " + ", ".join(f"{k} {n}" for k, n in sorted(result.redacted.items())))
    console.print(f"manifest: {manifest}")
    return 0
