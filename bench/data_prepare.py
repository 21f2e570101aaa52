"""How fast, and in how much memory, does `prepare` turn a big chat JSONL into tokenized data?

Generates a chat JSONL (OpenAI `messages` format) of N records from a seed, streaming it to disk:
an optional system message and 1-3 user/assistant turns of ~30-300 tokens, about 2% exact
duplicates of earlier records with their case and whitespace changed, and about 0.5% invalid
lines of three kinds (bad JSON, an unknown role, an empty assistant message).  Then each variant
runs in a fresh child process, so its peak RSS is its own and includes its imports:

- tuneforge prepare: `tuneforge.data.prepare.prepare` (validate, exact dedup, chat template +
  loss mask, tokenize, write the memory-mapped store) with on_invalid: skip and max_len 2048,
  then the same call again (a cache hit) in the same process;
- baseline: what a TRL / LLaMA-Factory user does: `datasets.load_dataset("json", ...)` and a
  per-record `.map()` of `tokenizer.apply_chat_template(messages, tokenize=True)` (num_proc 2).
  It cannot read the bad-JSON lines, so it gets a second file written in the same pass that holds
  only the valid lines (duplicates included: it does no dedup, no validation and no loss mask).

records/s is input records (lines of the file the variant reads) / wall seconds of the prepare
itself: imports and the tokenizer load are outside the timer, everything in `prepare` (or in
load_dataset + map) inside.  Peak RSS is the child's ru_maxrss (from wait4: the largest of the
child and its worker processes), and "tree peak" the memory of the child and all its descendants
together (the sum of their proportional set sizes, so pages that forked workers share count
once), sampled every 0.1 s.

    python bench/data_prepare.py                      # 1,000,000 records
    python bench/data_prepare.py --records 20000      # a quick check
    python bench/data_prepare.py --records 200000 --out prepare-200k.json --skip-baseline
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "embedded:smollm2-135m-instruct"
MAX_LEN = 2048
TARGET_RATE = 2000  # records/s
TARGET_RSS_MB = 2048
DUPLICATE_RATE = 0.02
INVALID_RATE = 0.005

# ---------------------------------------------------------------------------------------------
# The data: sentences built from the bench's own word lists.

SUBJECTS = [
    "the garden", "a small bakery", "the night train", "our river town", "the old lighthouse", "a wooden boat",
    "the school library", "the weather station", "a mountain village", "the city council", "my neighbour's dog",
    "the bicycle shop", "a quiet museum", "the harbour crane", "the spring market", "a paper kite",
    "the chess club", "the solar panel", "a rainy afternoon", "the kitchen radio", "the football team",
    "a glass greenhouse", "the morning ferry", "the stone bridge", "a vegetable soup", "the power grid",
    "the choir", "a street musician", "the repair manual", "the first snowfall", "the apple orchard",
    "a clay teapot", "the village well", "the late bus", "a travelling circus", "the compost heap",
]
VERBS = [
    "needs", "explains", "changes", "protects", "borrows", "measures", "remembers", "follows", "carries",
    "repairs", "describes", "welcomes", "collects", "improves", "shares", "ignores", "paints", "counts",
    "builds", "waters", "tests", "records", "cleans", "schedules", "outlasts", "feeds", "warms", "guides",
]
OBJECTS = [
    "fresh bread", "a careful plan", "the spare keys", "clean water", "a longer ladder", "the monthly budget",
    "seven candles", "a warm blanket", "the visitors' book", "a new timetable", "the broken fence",
    "fallen leaves", "an extra chair", "the tide table", "a box of nails", "the evening news",
    "a handful of seeds", "the missing receipt", "a second opinion", "the loudest bell", "a list of names",
    "three maps", "the summer festival", "a cup of tea", "the coldest room", "a short letter",
]
ADVERBS = [
    "slowly", "every morning", "without complaint", "twice a week", "before noon", "in winter",
    "quite often", "with great care", "on most weekends", "after the rain", "almost never", "by hand",
    "at dusk", "when it can", "for a while", "more than before", "at least once", "in silence",
]
CONNECTIVES = [
    "because", "although", "so", "while", "and", "but", "until", "unless", "since", "even though",
]
QUESTION_STARTS = [
    "Can you tell me why", "How often", "Is it true that", "Why do people say", "What happens when",
    "Could you explain how", "Do you know if", "When exactly", "Would it be wise if", "How likely is it that",
]
ANSWER_STARTS = [
    "Good question.", "In short,", "It depends.", "As a rule,", "From what is known,", "Briefly put,",
    "Here is the idea:", "Think of it this way:", "Usually,", "To be precise,",
]
SYSTEM_PROMPTS = [
    "You are a patient assistant who answers in plain words.",
    "You help people plan small projects. Keep answers practical.",
    "You are a friendly guide to a seaside town. Be brief and kind.",
    "Answer as a careful librarian would: cite what you know and say what you do not.",
    "You are a gardening helper. Prefer simple steps over long theory.",
    "You are a tutor for curious teenagers; explain, then give one example.",
    "Reply in a calm, even tone, and never invent numbers.",
    "You are an assistant for a repair shop. Ask for details when something is unclear.",
]


def clause(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}"


def statement(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        text = clause(rng)
    elif roll < 0.75:
        text = f"{clause(rng)}, {rng.choice(CONNECTIVES)} {clause(rng)}"
    else:
        text = f"{clause(rng)} {rng.randint(2, 9999)} times, {rng.choice(CONNECTIVES)} {clause(rng)}"
    return text[0].upper() + text[1:] + "."


def question(rng: random.Random) -> str:
    return f"{rng.choice(QUESTION_STARTS)} {clause(rng)}?"


def sentences(rng: random.Random, words: int, first: str | None = None) -> str:
    parts = [first] if first else []
    count = sum(len(p.split()) for p in parts)
    while count < words:
        part = statement(rng)
        parts.append(part)
        count += len(part.split())
    return " ".join(parts)


def conversation(rng: random.Random) -> dict:
    """One valid record of roughly 30-300 tokens (the template adds a default system prompt when there is none)."""
    words = int(math.exp(rng.uniform(math.log(8), math.log(190))))  # log-uniform: many short, some long
    turns = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    per_turn = max(4, words // turns)
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(turns):
        user_words = max(1, per_turn // 4)
        user = question(rng) if user_words < 12 else sentences(rng, user_words - 10, question(rng))
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": sentences(rng, per_turn - user_words, rng.choice(ANSWER_STARTS))})
    return {"messages": messages}


def disguised(record: dict, rng: random.Random) -> dict:
    """The same record after case and whitespace changes: an exact duplicate once normalised."""
    messages = []
    for message in record["messages"]:
        content = message["content"]
        change = rng.randrange(4)
        if change == 0:
            content = content.upper()
        elif change == 1:
            content = content.lower()
        elif change == 2:
            content = "  " + content.replace(" ", "   ", 3) + "\n"
        else:
            content = content.replace(". ", ".\n\n")
        messages.append({"role": message["role"], "content": content})
    return {"messages": messages}


def invalid_line(rng: random.Random, kind: str) -> str:
    record = conversation(rng)
    if kind == "bad JSON":
        line = json.dumps(record, ensure_ascii=False)
        return line[: rng.randrange(10, len(line) - 2)]
    assistants = [m for m in record["messages"] if m["role"] == "assistant"]
    if kind == "unknown role":
        rng.choice(record["messages"])["role"] = rng.choice(["narrator", "customer", "admin", "Bot2"])
    else:  # empty assistant
        rng.choice(assistants)["content"] = rng.choice(["", "   ", "\n"])
    return json.dumps(record, ensure_ascii=False)


INVALID_KINDS = ("bad JSON", "unknown role", "empty assistant")


def generate(path: Path, clean_path: Path | None, records: int, seed: int) -> dict:
    """Write `records` lines to `path` (and the valid ones to `clean_path`), streaming; return the counts."""
    rng = random.Random(seed)
    recent: deque[dict] = deque(maxlen=4096)  # earlier valid records to duplicate (bounded memory)
    counts: Counter = Counter()
    started = time.perf_counter()
    clean_file = clean_path or Path(os.devnull)
    with path.open("w", encoding="utf-8") as out, clean_file.open("w", encoding="utf-8") as clean:
        for _ in range(records):
            roll = rng.random()
            if roll < INVALID_RATE:
                kind = rng.choice(INVALID_KINDS)
                counts[f"invalid: {kind}"] += 1
                out.write(invalid_line(rng, kind) + "\n")
                continue
            if roll < INVALID_RATE + DUPLICATE_RATE and recent:
                record = disguised(rng.choice(recent), rng)
                counts["duplicates"] += 1
            else:
                record = conversation(rng)
                recent.append(record)
            line = json.dumps(record, ensure_ascii=False) + "\n"
            out.write(line)
            clean.write(line)
            counts["valid"] += 1
    return {
        "records": records, "valid": counts["valid"], "duplicates": counts["duplicates"],
        "invalid": {kind: counts[f"invalid: {kind}"] for kind in INVALID_KINDS},
        "bytes": path.stat().st_size, "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------
# The children: one variant each, in a fresh process.

def cpu_seconds() -> float:
    """CPU time of this process and its finished (waited-for) workers: user + system."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def child_tuneforge(args) -> dict:
    from tuneforge.config import CleanConfig, DataConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.models.tokenizer import training_tokenizer

    tokenizer, stop_ids = training_tokenizer(MODEL, "tokenizer")
    config = DataConfig(train=[str(args.file)], on_invalid="skip", clean=CleanConfig(dedup=True))
    started, cpu = time.perf_counter(), cpu_seconds()
    prepared = prepare(config, tokenizer, stop_ids, MAX_LEN, 0)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    again = prepare(config, tokenizer, stop_ids, MAX_LEN, 0)
    cached_seconds = time.perf_counter() - started
    m = prepared.manifest
    return {
        "seconds": seconds, "cpu_seconds": cpu, "cached_seconds": cached_seconds, "cache_hit": again.from_cache,
        "rss_after_build_mb": rss_first,
        "invalid": m.invalid_records, "dropped": m.dropped_records, "cleaning": m.cleaning,
        "train_records": m.train_records, "train_tokens": m.train_tokens, "trained_tokens": m.trained_tokens,
        "store_mb": sum(f.stat().st_size for f in (prepared.directory / "store").iterdir()) / 2**20,
    }


def child_baseline(args) -> dict:
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    from tuneforge.models.resolve import resolve

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve(MODEL))

    def tokenize(example: dict) -> dict:
        out = tokenizer.apply_chat_template(example["messages"], tokenize=True)
        return {"input_ids": out["input_ids"] if hasattr(out, "keys") else out}

    started, cpu = time.perf_counter(), cpu_seconds()
    data = datasets.load_dataset("json", data_files=str(args.file), split="train", cache_dir=str(args.cache))
    procs, note = args.procs, ""
    try:
        data = data.map(tokenize, num_proc=procs if procs > 1 else None, remove_columns=data.column_names)
    except Exception as exc:  # multiprocessing trouble: fall back to one process, and say so
        if procs == 1:
            raise
        note = f"num_proc={procs} failed ({type(exc).__name__}: {exc}); ran with 1"
        procs = 1
        data = data.map(tokenize, remove_columns=data.column_names)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    tokens = int(pc.sum(pc.list_value_length(data.data.column("input_ids"))).as_py())
    return {"seconds": seconds, "cpu_seconds": cpu, "train_records": len(data), "train_tokens": tokens,
            "procs": procs, "note": note}


def run_child(variant: str, args, env: dict, extra: list[str]) -> dict:
    """Run one variant in a fresh process; its result, wall time, peak RSS and sampled tree peak."""
    result_path = args.workdir / f"result-{variant}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--result", str(result_path), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    tree_peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            tree_peak[0] = max(tree_peak[0], tree_pss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{variant} child failed with exit code {process.returncode}")
    result = json.loads(result_path.read_text())
    result.update(process_seconds=time.perf_counter() - started, peak_rss_mb=usage.ru_maxrss / 1024, tree_peak_mb=tree_peak[0])
    return result


def tree_pss_mb(pid: int) -> float:
    """Memory of a process and all its descendants: their proportional set sizes (shared pages split
    between the processes that share them, so forked workers are not counted twice), from /proc."""
    total_kb, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                total_kb += next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack += [int(p) for p in handle.read().split()]
        except (OSError, ValueError, StopIteration):
            continue
    return total_kb / 1024


# ---------------------------------------------------------------------------------------------

def mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def table(rows: list[dict]) -> str:
    header = ["variant", "records", "wall s", "records/s", f">= {TARGET_RATE:,}/s", "CPU s", "peak RSS MB", "tree peak MB",
              f"< {TARGET_RSS_MB:,} MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        rate = row["records"] / row["seconds"]
        memory = max(row["peak_rss_mb"], row["tree_peak_mb"]) if row.get("peak_rss_mb") is not None else None
        lines.append("| " + " | ".join([
            row["name"], f"{row['records']:,}", f"{row['seconds']:.2f}", f"{rate:,.0f}", mark(rate >= TARGET_RATE),
            f"{row['cpu_seconds']:.2f}" if "cpu_seconds" in row else "-",
            f"{row['peak_rss_mb']:,.0f}" if memory is not None else "(same process)",
            f"{row['tree_peak_mb']:,.0f}" if memory is not None else "-",
            mark(memory < TARGET_RSS_MB) if memory is not None else "-",
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the generated JSONL files (their paths are printed)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-procs", type=int, default=2, help="num_proc of the baseline's .map()")
    parser.add_argument("--workdir", type=Path, help="where the files and caches go (default: a new temporary folder)")
    parser.add_argument("--child", choices=["tuneforge", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child_tuneforge(args) if args.child == "tuneforge" else child_baseline(args)
        args.result.write_text(json.dumps(result))
        return

    from tuneforge.paths import models_cache

    own_workdir = args.workdir is None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-prepare-"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data, clean = args.workdir / "chat.jsonl", args.workdir / "chat-valid.jsonl"
    try:
        print(f"generating {args.records:,} records (seed {args.seed}) into {args.workdir} ...", file=sys.stderr, flush=True)
        generated = generate(data, None if args.skip_baseline else clean, args.records, args.seed)
        invalid = sum(generated["invalid"].values())
        print(f"generated {data.name}: {generated['records']:,} lines, {generated['bytes'] / 2**20:,.0f} MB in "
              f"{generated['seconds']:.0f} s; {generated['duplicates']:,} duplicates (case/whitespace changed), "
              f"{invalid:,} invalid ({', '.join(f'{n:,} {k}' for k, n in generated['invalid'].items())})")

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        home = args.workdir / "tuneforge-home"
        home.mkdir(exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(models_cache().resolve(), target_is_directory=True)
        rows, figures = [], {"generated": generated}

        print("running tuneforge prepare ...", file=sys.stderr, flush=True)
        tf = run_child("tuneforge", args, {**env, "TUNEFORGE_HOME": str(home)}, ["--file", str(data)])
        figures["tuneforge"] = tf
        rows.append({"name": "tuneforge prepare", "records": args.records, **tf})
        rows.append({"name": "tuneforge prepare, cache hit", "records": args.records, "seconds": tf["cached_seconds"],
                     "peak_rss_mb": None})
        if not args.skip_baseline:
            print(f"running baseline (datasets + apply_chat_template, num_proc={args.baseline_procs}) ...",
                  file=sys.stderr, flush=True)
            cache = args.workdir / "hf-datasets-cache"
            base = run_child("baseline", args, {**env, "HF_DATASETS_CACHE": str(cache)},
                             ["--file", str(clean), "--cache", str(cache), "--procs", str(args.baseline_procs)])
            figures["baseline"] = base
            rows.append({"name": f"baseline: datasets.map(apply_chat_template), num_proc={base['procs']}",
                         "records": generated["valid"], **base})

        print()
        print(table(rows))
        print()
        cleaning = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(tf["cleaning"].items()) if v) or "nothing"
        print(f"tuneforge report: {tf['invalid']:,} invalid skipped (generated {invalid:,}), {tf['dropped']:,} dropped "
              f"(cleaning: {cleaning}; generated {generated['duplicates']:,} duplicates), {tf['train_records']:,} train "
              f"records, {tf['train_tokens']:,} tokens ({tf['trained_tokens']:,} trained, "
              f"{tf['train_tokens'] / max(tf['train_records'], 1):.0f} per record), store {tf['store_mb']:,.0f} MB")
        print(f"tuneforge cache hit: {tf['cached_seconds']:.2f} s (from cache: {tf['cache_hit']}; hashes the input file); "
              f"RSS after the build {tf['rss_after_build_mb']:,.0f} MB; child process {tf['process_seconds']:.0f} s with imports "
              "and tokenizer load")
        if not args.skip_baseline:
            print(f"baseline: read {clean.name}, the {generated['valid']:,} valid lines only (it cannot skip bad JSON; "
                  f"no validation, no dedup, no loss mask): {base['train_records']:,} records, {base['train_tokens']:,} tokens; "
                  f"child process {base['process_seconds']:.0f} s" + (f"; {base['note']}" if base["note"] else ""))
        print("records/s: input lines / wall s of the prepare (tokenizer load excluded); CPU s: user + system "
              "seconds of the same span, the child's and its workers' (less sensitive to other load). peak RSS: ru_maxrss of the "
              "child (largest single process); tree peak: PSS summed over the child and its workers (shared pages "
              "counted once), sampled every 0.1 s; the memory mark uses the larger of the two.")
        if args.out:
            args.out.write_text(json.dumps(figures, indent=2))
    finally:
        for name in ("tuneforge-home", "hf-datasets-cache", "result-tuneforge.json", "result-baseline.json"):
            target = args.workdir / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
        if args.keep:
            print(f"kept {data}" + ("" if args.skip_baseline else f" and {clean}"), file=sys.stderr)
        elif own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
        else:
            data.unlink(missing_ok=True)
            clean.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
