"""How fast does tuneforge's GRPO train, and in how much memory, beside TRL's `GRPOTrainer` on the same job?

One invocation runs both, each in a fresh child process, on the same model (the embedded
SmolLM2-135M-Instruct, the HF directory `tuneforge.models.resolve` gives), prompts (the first
--prompts of examples/grpo/arithmetic_train.jsonl, conversational, with their `answer` column),
rewards (examples/grpo/rewards.py's answer_format x0.5 and correct_answer x1.0: the same functions,
TRL's signature), group size (--generations answers per prompt), prompts per step (--batch), answer
length limit (--max-new-tokens), sampling (temperature 1, top_p 1), LoRA (r 16, alpha 32, dropout 0,
all linear layers), optimizer (AdamW, constant lr 3e-4, grad-norm clip 1.0), loss (token-level
normalisation: TRL's loss_type "dapo"; group std scaling; beta 0, so neither runs a reference
pass; one update per generation) and precision (bf16 autocast over a bf16 base where bf16 is native,
as tuneforge's default and TRL's bf16=True; --precision fp32 for both in fp32).
No evaluation, general check or periodic checkpoint runs in either.  Generation: tuneforge's rollouts
through its continuous-batching decoder (models/rollout.py; the frozen base packed for decoding where the
CPU has native bf16, models/packed_base.py); TRL's `model.generate` at the settings a careful user would
choose: its generation batch equal to ours (steps_per_generation=1: one step's prompts x G answers at
once, as tuneforge generates them), KV cache on (use_cache, TRL's default without gradient checkpointing),
top_k 0 as TRL defaults and as tuneforge samples.  --trl-continuous-batching makes TRL generate with
transformers' continuous batching (`generate_batch`) instead.

Measured in each child: the time at the end of every optimizer step (tuneforge: the driver's `stop`
callback; TRL: `TrainerCallback.on_step_end`); steps/s over steps 2..N (step 1 is warm-up);
generated tokens/s = the answer tokens of steps 2..N (each trainer's own mean answer length per step
x answers per step: tuneforge's train_completion_length, TRL's completions/mean_length) over the same
span; peak RSS = the child's ru_maxrss (imports and model load included).  --threads N sets torch's CPU
threads in both (tuneforge's train.threads, torch.set_num_threads before TRL loads the model).

    python bench/grpo_speed.py                      # 8 steps each, 4 prompts x 8 answers, 48 new tokens
    python bench/grpo_speed.py --steps 5 --prompts 16 --batch 2 --generations 4 --max-new-tokens 32 --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "grpo" / "arithmetic_train.jsonl"
REWARDS = ROOT / "examples" / "grpo" / "rewards.py"


def rows(n: int) -> list[dict]:
    return [json.loads(line) for line in PROMPTS.read_text().splitlines()[:n]]


def run_tuneforge(args, workdir: Path) -> dict:
    from tuneforge.config import load_config
    from tuneforge.train.driver import train

    data = workdir / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.prompts)))
    overrides = [f"data.train={data}", "data.validation=[]", "eval.general_check=false", "checkpoint.every_steps=null",
                 f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.warmup_steps=0",
                 f"grpo.num_generations={args.generations}", f"grpo.max_new_tokens={args.max_new_tokens}",
                 "grpo.temperature=1.0", "grpo.top_p=1.0",  # as TRL's below (the quickstart samples at 0.7)
                 f"output_dir={workdir / 'run'}", f"model.dtype={'auto' if args.precision == 'bf16' else 'float32'}",
                 f"train.threads={args.threads or 'null'}"]
    config = load_config(ROOT / "configs" / "grpo-quickstart.yaml", overrides)
    ends: list[float] = []
    train(config, overwrite=True, stop=lambda state: ends.append(time.monotonic()) and False)
    metrics = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    lengths = [m["train_completion_length"] for m in metrics if "train_completion_length" in m]
    return figures(ends, lengths, args)


def run_trl(args, workdir: Path) -> dict:
    import importlib.util

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tuneforge.models.resolve import resolve

    spec = importlib.util.spec_from_file_location("grpo_rewards", REWARDS)
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    model_dir = resolve("embedded:smollm2-135m-instruct")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ends: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.monotonic())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(
        output_dir=str(workdir / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch * args.generations,
        num_generations=args.generations, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        learning_rate=3e-4, lr_scheduler_type="constant", max_grad_norm=1.0, beta=0.0, num_iterations=1,
        loss_type="dapo", scale_rewards="group", reward_weights=[0.5, 1.0], logging_steps=1, save_strategy="no",
        report_to="none", bf16=args.precision == "bf16", disable_dropout=True, seed=42, steps_per_generation=1,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,  # tuneforge's default: off
        use_transformers_continuous_batching=args.trl_continuous_batching,
    )
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[rewards.answer_format, rewards.correct_answer], args=config,
                          train_dataset=Dataset.from_list(rows(args.prompts)), processing_class=tokenizer,
                          peft_config=peft, callbacks=[Timer()])
    trainer.train()
    return figures(ends, lengths, args)


def figures(ends: list[float], lengths: list[float], args) -> dict:
    span = ends[-1] - ends[0]
    answers = args.batch * args.generations
    return {"steps": len(ends), "steps_per_s": (len(ends) - 1) / span,
            "generated_tokens_per_s": sum(lengths[1:]) * answers / span, "mean_answer_tokens": sum(lengths) / len(lengths),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, help="torch CPU threads in both trainers (default: one per core); "
                        "1 on a CPU shared with other busy processes, where threads wait on each other")
    parser.add_argument("--trl-continuous-batching", action="store_true",
                        help="TRL generates with transformers' continuous batching (generate_batch) instead of generate")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both trainers, who starts alternating")
    parser.add_argument("--worker", choices=["tuneforge", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_tuneforge if args.worker == "tuneforge" else run_trl)(args, Path(tmp))
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"GRPO, SmolLM2-135M-Instruct, LoRA r16, {args.precision}, {args.steps} steps of {args.batch} prompts x "
          f"{args.generations} answers, <= {args.max_new_tokens} new tokens, {args.rounds} round(s)", flush=True)
    ratios = []
    for round_ in range(args.rounds):  # alternate who runs first: the shared machine's load drifts
        order = ("tuneforge", "trl") if round_ % 2 == 0 else ("trl", "tuneforge")
        results = {worker: run_child(worker) for worker in order}
        ratios.append(report(round_ + 1, results))
    if args.rounds > 1:
        print(f"steps/s ratio per round: {', '.join(f'{r[0]:.2f}x' for r in ratios)}; "
              f"median {statistics.median(r[0] for r in ratios):.2f}x; "
              f"peak RSS ratio {', '.join(f'{r[1]:.2f}x' for r in ratios)}")


def run_child(worker: str) -> dict:
    argv = [sys.executable, __file__, "--worker", worker, *sys.argv[1:]]
    output = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in output.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{worker} failed:\n{output.stderr[-3000:]}")
    return json.loads(line[7:])


def report(round_: int, results: dict) -> tuple[float, float]:
    print(f"round {round_} ({' then '.join(results)}):")
    print(f"{'':12}{'steps/s':>10}{'gen tok/s':>12}{'answer len':>12}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:12}{r['steps_per_s']:>10.4f}{r['generated_tokens_per_s']:>12.1f}{r['mean_answer_tokens']:>12.1f}"
              f"{r['peak_rss_mb']:>13.0f}")
    ours, theirs = results["tuneforge"], results["trl"]
    steps, rss = ours["steps_per_s"] / theirs["steps_per_s"], ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    print(f"ratio tuneforge/TRL: steps/s {steps:.2f}x, generated tokens/s "
          f"{ours['generated_tokens_per_s'] / theirs['generated_tokens_per_s']:.2f}x, peak RSS {rss:.2f}x", flush=True)
    return steps, rss

if __name__ == "__main__":
    main()
