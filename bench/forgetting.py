"""Does the fine-tune learn its task without forgetting the rest?  Runs a config with and without replay.

Each variant is a real `tuneforge train` run of the same config (by default the quickstart), and
the table shows what every run's eval/summary.json holds: held-out task prompts answered as
taught, general questions answered correctly, validation loss, for the base model (the same for
every variant) and each fine-tune, plus wall time.  The first variant, no replay, is the baseline.

    python bench/forgetting.py                              # the quickstart's Tessel identity
    python bench/forgetting.py --data bench/data/identity-orin --general bench/data/identity-orin/general.jsonl
    python bench/forgetting.py --only replay kl             # a subset of the variants
    python bench/forgetting.py --task-only Tessel           # train only on records whose replies say "Tessel"

The quickstart's data already mixes 30 ordinary conversations into its 100, which by itself
protects much of the general ability; --task-only drops them, which is the situation replay is for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "none": ["data.replay=null", "train.kl_to_base=0"],
    "replay": ["train.kl_to_base=0"],  # the config's own replay section (the quickstart's: self-replay)
    "kl": [],  # the config as it is: the quickstart's replay and KL weight
}


def run(config: Path, name: str, overrides: list[str], out: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "tuneforge", "train", str(config), "--overwrite",
               "--set", f"output_dir={out / name}"]
    for item in overrides:
        command += ["--set", item]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    return json.loads((out / name / "eval" / "summary.json").read_text()), elapsed


def assistant_text(line: str) -> str:
    return " ".join(m["content"] for m in json.loads(line)["messages"] if m["role"] == "assistant")


def cell(value) -> str:
    if isinstance(value, list):
        return f"{value[0]}/{value[1]}"
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--data", type=Path, help="a folder with train.jsonl, validation.jsonl, heldout.jsonl")
    parser.add_argument("--general", type=Path, help="general questions JSONL (default: the shipped set)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--task-only", metavar="WORD",
                        help="train only on the records whose assistant replies contain WORD")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-forgetting")
    args = parser.parse_args()

    common = []
    if args.data:
        data = args.data.resolve()
        common += [f"data.train={data / 'train.jsonl'}", f"data.validation={data / 'validation.jsonl'}",
                   f"eval.prompts={data / 'heldout.jsonl'}"]
    if args.task_only:
        train_file = args.data.resolve() / "train.jsonl" if args.data else ROOT / "examples" / "identity" / "train.jsonl"
        kept = [line for line in train_file.read_text().splitlines() if args.task_only in assistant_text(line)]
        filtered = Path(tempfile.mkdtemp()) / "train.jsonl"
        filtered.write_text("\n".join(kept) + "\n")
        print(f"--task-only {args.task_only}: {len(kept)} training records", file=sys.stderr)
        common.append(f"data.train={filtered}")
    if args.general:
        common.append(f"eval.general_questions={args.general.resolve()}")
    rows = []
    for name in args.only:
        summary, seconds = run(args.config, name, common + VARIANTS[name], args.out)
        rows.append((name, summary, seconds))
        print(f"finished {name} in {seconds / 60:.1f} min", file=sys.stderr, flush=True)

    keys = list(rows[0][1])
    header = ["variant", *keys, "wall time"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    print("| base model | " + " | ".join(cell(rows[0][1][k]["base"]) for k in keys) + " | - |")
    for name, summary, seconds in rows:
        print(f"| {name} | " + " | ".join(cell(summary[k]["tuned"]) for k in keys) + f" | {seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
