"""How fast does tuneforge's DPO train, and in how much memory, beside TRL's `DPOTrainer` on the same job?

One invocation trains the same model (the embedded SmolLM2-135M-Instruct's HF directory, for both) on
the same pairs (examples/preference/train.jsonl, in TRL's conversational prompt/chosen/rejected shape,
repeated to --pairs pairs, one temporary JSONL that both read) with the same LoRA (r=16, alpha=32,
dropout 0, all linear layers), the same DPO (sigmoid loss, beta 0.1, the reference = the adapter
switched off, no precomputed reference), optimizer settings (AdamW, lr 5e-4, cosine to zero without
warm-up, weight decay 0, clip 1.0, seed 42), batch (4 pairs, grad_accum 1, max length 256) and precision
(`--precision bf16`, the default where bf16 is native: a bf16 base under bf16 autocast for both;
`fp32`: both in fp32).  Only training runs: no evaluation, general check, pre-flight estimate or periodic checkpoints
(as bench/train_speed.py).

Each trainer runs in a fresh child process, alternating for --rounds rounds; each row is the median
round by tokens/s.  tokens/s counts the non-padding tokens of every row the model is run on (chosen
and rejected rows, as each trainer's collate function builds them) over the steps after 3 warm-up
steps; peak RSS is the child's ru_maxrss (imports, model load and data preparation included).  The
first step's loss is printed for both: with the policy equal to its reference it is log 2 = 0.6931 for
both (the loss itself is pinned against a hand computation in tests/train/test_preference.py).
Helpers (rates, medians, CUDA peak) are bench/train_speed.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import (  # noqa: E402
    MODEL, ROOT, WARMUP_STEPS, count_batches, cuda_peak_mb, median_run, positive_int, rates, step_clock,
)

SOURCE = ROOT / "examples" / "preference" / "train.jsonl"
CONFIG = ROOT / "configs" / "dpo-quickstart.yaml"
BATCH_SIZE, MAX_LEN, LEARNING_RATE, SEED, BETA = 4, 256, 5e-4, 42, 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
TRAINERS = ("tuneforge", "trl")


def write_data(path: Path, pairs: int) -> int:
    """The source pairs as conversational prompt/chosen/rejected records, repeated in order to `pairs`."""
    source = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in source]
    path.write_text("".join(json.dumps(rows[i % len(rows)]) + "\n" for i in range(pairs)))
    return len(rows)


def child_tuneforge(args) -> dict:
    from tuneforge.config import load_config
    from tuneforge.evaluate.run_metrics import read_metrics
    from tuneforge.train import driver
    from tuneforge.train.methods import preference

    batches = count_batches(preference, lambda b: int(b["attention_mask"].sum()))
    step_ends, mark = step_clock()

    overrides = [
        f"output_dir={args.work / 'tuneforge-run'}", f"data.train=[{args.data}]", "data.validation=[]",
        f"model.name={args.model_dir}", "data.clean.dedup=false", f"train.max_steps={args.steps}",
        f"train.batch_size={BATCH_SIZE}", f"train.learning_rate={LEARNING_RATE}", "train.warmup_ratio=0",
        f"train.max_seq_length={MAX_LEN}", f"train.seed={SEED}", f"preference.beta={BETA}", "preference.loss=dpo",
        f"model.dtype={'bfloat16' if args.precision == 'bf16' else 'float32'}", f"lora.dropout={LORA['dropout']}",
        "eval.general_check=false", "eval.prompts=null", "eval.every_steps=null", "checkpoint.every_steps=null",
        "train.preflight=off",
    ]
    config = load_config(CONFIG, overrides=overrides)
    result = driver.train(config, overwrite=True, stop=mark)
    losses = [r["train_loss"] for r in read_metrics(result.run_dir) if "train_loss" in r]
    step_tokens = batches[: len(step_ends)]
    return {**rates(step_ends, step_tokens, WARMUP_STEPS), "tokens": sum(step_tokens), "first_loss": losses[0],
            "final_loss": losses[-1], "peak_cuda_mb": cuda_peak_mb()}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    records = [json.loads(line) for line in args.data.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    bf16 = args.precision == "bf16"
    config = DPOConfig(
        output_dir=str(args.work / "trl-run"), max_steps=args.steps, per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=SEED, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, bf16=bf16, gradient_checkpointing=False, max_length=MAX_LEN,
        beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=False, dataloader_num_workers=0,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"}, use_cpu=not torch.cuda.is_available(),
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")

    class Marks(TrainerCallback):
        def __init__(self):
            self.step_ends, self.losses = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.monotonic())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    marks = Marks()
    trainer = DPOTrainer(model=str(args.model_dir), args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[marks])
    batches: list[int] = []
    collator = trainer.data_collator

    def counting_collator(examples):
        batch = collator(examples)
        mask = next(batch[k] for k in ("attention_mask", "prompt_attention_mask") if k in batch)
        extra = sum(int(batch[k].sum()) for k in ("chosen_attention_mask", "rejected_attention_mask") if k in batch)
        batches.append(int(mask.sum()) * (2 if "prompt_attention_mask" in batch else 1) + extra)
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    step_tokens = batches[: len(marks.step_ends)]
    return {**rates(marks.step_ends, step_tokens, WARMUP_STEPS), "tokens": sum(step_tokens),
            "first_loss": marks.losses[0], "final_loss": marks.losses[-1], "peak_cuda_mb": cuda_peak_mb()}


def run_child(name: str, args) -> dict:
    result_path, log_path = args.work / f"{name}.json", args.work / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", str(args.data),
               "--work", str(args.work), "--steps", str(args.steps), "--model-dir", str(args.model_dir),
               "--precision", args.precision, "--result", str(result_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{name} child failed; log: {log_path}")
    return {**json.loads(result_path.read_text()), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=12, help="optimizer steps (the first 3 are warm-up)")
    parser.add_argument("--pairs", type=positive_int, default=200, help="repeat the pairs to this many")
    parser.add_argument("--rounds", type=positive_int, default=1)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    for hidden in ("--data", "--work", "--result", "--model-dir"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_tuneforge(args) if args.child == "tuneforge" else child_trl(args)
        result["child_ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.result.write_text(json.dumps(result))
        return

    import torch

    from tuneforge.models.load import native_bf16
    from tuneforge.models.resolve import resolve

    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu")) else "fp32"
    args.model_dir, args.work = resolve(MODEL), Path(tempfile.mkdtemp(prefix="tuneforge-dpo-speed-"))
    args.data = args.work / "pairs.jsonl"
    distinct = write_data(args.data, args.pairs)
    runs: dict[str, list[dict]] = {name: [] for name in TRAINERS}
    for round_number in range(1, args.rounds + 1):
        for name in TRAINERS:
            print(f"round {round_number}/{args.rounds}: {name} ({args.steps} steps) ...", file=sys.stderr, flush=True)
            runs[name].append(run_child(name, args))
    results = {name: median_run(r) for name, r in runs.items()}
    print(f"\nDPO speed: {MODEL}, LoRA r=16 alpha=32 all-linear, sigmoid beta {BETA}, reference = adapter off, "
          f"batch {BATCH_SIZE} pairs, max length {MAX_LEN}, {args.steps} steps, {args.precision}; "
          f"{args.pairs} pairs repeated from {distinct} in {SOURCE.relative_to(ROOT)}; "
          f"CPU threads {torch.get_num_threads()}")
    print("| trainer | tokens/s (after 3 warm-up steps) | non-pad tokens | peak RSS MB | first-step loss | final loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['tokens']:,} | {r['peak_rss_mb']:,.0f} | "
              f"{r['first_loss']:.4f} | {r['final_loss']:.4f} |")
    ours, theirs = results["tuneforge"], results["trl"]
    print(f"ratio tuneforge / TRL: tokens/s {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
          f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
