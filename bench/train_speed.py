"""How fast does tuneforge train, and in how much memory, beside TRL's `SFTTrainer` on the same job?

One invocation trains the same model (the embedded SmolLM2-135M-Instruct, the HF directory that
`tuneforge.models.resolve` gives, for both) on the same data (the quickstart's
examples/identity/train.jsonl repeated, in order, until it holds --tokens tokens with the chat
template, written to one temporary `messages` JSONL) with the same LoRA (r=16, alpha=32, dropout
0.05, all linear layers), optimizer settings (AdamW, lr 2e-4, cosine to zero without warm-up,
weight decay 0, grad-norm clip 1.0, seed 42), batch (4 examples, grad_accum 1, padded to the
longest in the batch, max length 1024, no packing, no padding-free batches) and number of
optimizer steps, and precision: with `--precision bf16` (the default where bf16 matmuls are native: CUDA,
or a CPU with AVX512-BF16 or AMX) both train a bf16 base with bf16 autocast (tuneforge's default there,
and TRL's `bf16=True` default), with `--precision fp32` both train in fp32.  Only training runs: no replay, evaluation, general check, pre-flight estimate or periodic checkpoints
(tuneforge still saves its final adapter after the loop, outside the timed span).

First, in this process, the machine's matmul peaks: a 2048x2048 fp32 and bf16 matmul in a loop (8192x8192 on
CUDA), the best of a few ~1 s rounds; MFU is against the peak of the precision trained in.  Then each trainer runs in a fresh child process:

- tuneforge: `tuneforge.train.driver.train(load_config(configs/quickstart.yaml, overrides))`;
  its defaults otherwise (chunked LM-head loss on), gradient checkpointing off;
- baseline: TRL `SFTTrainer` with a `datasets.Dataset.from_list` of the same `messages` records
  and a peft `LoraConfig`; gradient checkpointing off (TRL's default is on), `bf16` as --precision says,
  logging every step, no saving, no evaluation, its default optimizer and random batch order.

Batch order differs: tuneforge groups batches by length within shuffled windows, TRL's default
sampler is random, so TRL's batches carry more padding (the table shows how much);
`--trl-sampler group_by_length` gives the baseline length-grouped batches too.

The trainers alternate for --rounds rounds (tuneforge, TRL, tuneforge, TRL, ...; 3 by default) and
each one's row is its median round by tokens/s, every round's figure printed beneath: the 2-core
machine's speed drifts by 10-20% over minutes, and one slow spell would otherwise decide the ratio.

Measured in each child: the time at the end of every optimizer step (tuneforge: its `stop`
callback; TRL: a `TrainerCallback.on_step_end`) and the non-padding tokens (attention-mask sum)
of every batch, counted as the trainer's collate function builds it.  tokens/s is the non-pad
tokens of steps 4..N over the time from the end of step 3 to the end of step N (steps 1-3 are
warm-up); "all steps" is tuneforge's own train_tokens_per_s from metrics.jsonl and TRL's
num_tokens / time from `on_train_begin`; loop wall s is the whole training loop (tuneforge:
tokens / its cumulative train_tokens_per_s at the last step, which its loop times from just before
the first step).  Peak RSS is the child's ru_maxrss (imports, model load and data preparation
included); peak CUDA memory is `torch.cuda.max_memory_allocated`.  Final loss is the last step's
training loss (mean cross-entropy per trained token of that one batch; noisy, so the mean of the
last five steps is shown too).

Loss masking: tuneforge trains on assistant content + end-of-turn token only.  TRL's
`assistant_only_loss=True` needs `{% generation %}` markers that SmolLM2's template lacks, so the
baseline gets the same template with markers added around each assistant message's content and
<|im_end|> (checked here to render every record to the identical text), i.e. the same trained
tokens.  `--trl-loss completion` instead splits each record into prompt/completion at the last
assistant message (earlier assistant turns are then not trained); `--trl-loss full` trains on
every token.  The output says which was used and how many tokens each trainer trains on.

MFU = achieved FLOP/s / measured matmul peak, with FLOPs per non-pad token = 4 * N_base + 6 * N_lora:
the frozen base needs forward (2N) and input gradients (2N) but no weight gradients; the LoRA
weights need all three.  N_base counts every parameter of the model once (134.5M: the tied
embedding matrix is also the output head's matmul); attention-score FLOPs (~2% at these lengths)
and the compute spent on padding are not counted.

    python bench/train_speed.py                        # 30 steps each, 3 rounds (~5 minutes on 2 cores)
    python bench/train_speed.py --rounds 1             # one run of each
    python bench/train_speed.py --steps 10 --tokens 5000 --out speed.json
    python bench/train_speed.py --trl-sampler group_by_length   # a baseline with little padding too
    python bench/train_speed.py --only tuneforge       # no baseline (it needs `pip install -e .[bench]`)
    python bench/train_speed.py --random-init bench/configs/llama-3.2-1b.json   # a 1B shape, random weights

`--random-init CONFIG` trains a model built from an HF config file (bench/configs/ holds SmolLM2-135M's
and Llama-3.2-1B's shapes) with seeded random weights instead of the embedded model: speed and memory
do not depend on the weights' values, and a GPU machine without network or room for checkpoints can
run it.  The tokenizer (for the data and the chat template) is the embedded model's, or --tokenizer DIR;
a larger vocabulary in the config (128k for Llama-3.2) keeps its full LM-head cost.  The losses of a
random model start near ln(vocabulary) and are comparable only between the two trainers of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "embedded:smollm2-135m-instruct"
SOURCE = ROOT / "examples" / "identity" / "train.jsonl"
CONFIG = ROOT / "configs" / "quickstart.yaml"
WARMUP_STEPS = 3
BATCH_SIZE = 4
MAX_LEN = 1024
LEARNING_RATE = 2e-4
SEED = 42
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
TRAINERS = ("tuneforge", "trl")
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # matmul sizes that reach each device's peak

# ---------------------------------------------------------------------------------------------
# Data, peak and model size: in the parent process.


def write_data(path: Path, tokens: int, model_dir: Path) -> dict:
    """The quickstart records, repeated in order until their chat-templated token count reaches `tokens`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in records]
    lines, total = [], 0
    while total < tokens:
        index = len(lines) % len(records)
        lines.append(json.dumps(records[index], ensure_ascii=False))
        total += lengths[index]
    path.write_text("\n".join(lines) + "\n")
    return {"records": len(lines), "tokens": total, "source_records": len(records)}


def matmul_peak(dtype_name: str, device: str, rounds: int = 3, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n matmul loop: the best of `rounds` rounds of about `seconds` each."""
    import torch

    n = PEAK_SIZE[device]
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    a @ b
    sync()
    per_call = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / per_call))
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def parameter_counts(model_dir: Path) -> dict:
    """Frozen and LoRA parameter counts, from the model's config on the meta device (no weights loaded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    warnings.filterwarnings("ignore", category=FutureWarning)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters()) - lora
    return {"n_base": base, "n_lora": lora, "flops_per_token": 4 * base + 6 * lora}


def random_model(config_path: Path, tokenizer_dir: Path | None, out: Path, cuda: bool) -> Path:
    """A model directory of the config's shape with seeded random weights and the given tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.resolve import resolve

    raw = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or resolve(MODEL))
    if raw["vocab_size"] < len(tokenizer):
        raise SystemExit(f"{config_path}: vocab_size {raw['vocab_size']} is below the tokenizer's {len(tokenizer)}")
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
           "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
    config = AutoConfig.for_model(**raw, **ids)
    torch.manual_seed(SEED)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


# ---------------------------------------------------------------------------------------------
# The children: one trainer each, in a fresh process.


def rates(step_ends: list[float], step_tokens: list[int], warmup: int) -> dict:
    """Non-pad tokens/s over the steps after `warmup`, from per-step end times and tokens."""
    steps = len(step_ends)
    if steps <= warmup:
        raise SystemExit(f"--steps must exceed the {warmup} warm-up steps")
    tokens = sum(step_tokens[warmup:steps])
    seconds = step_ends[-1] - step_ends[warmup - 1]
    return {"steps": steps, "timed_tokens": tokens, "timed_s": seconds, "tokens_per_s": tokens / seconds}


def cuda_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def count_batches(module, measure) -> list:
    """Record `measure(batch)` of every batch `module.collate` builds, in training order (instrumentation only:
    the method builds its batches with this name)."""
    seen: list = []
    collate = module.collate

    def counting_collate(*args, **kwargs):
        batch = collate(*args, **kwargs)
        seen.append(measure(batch))
        return batch

    module.collate = counting_collate
    return seen


def step_clock():
    """(the end time of each optimizer step, the driver's `stop` callback that records them)."""
    ends: list[float] = []

    def mark(state) -> bool:
        ends.append(time.monotonic())
        return False

    return ends, mark


def child_tuneforge(args) -> dict:
    from tuneforge.config import load_config
    from tuneforge.train import driver
    from tuneforge.train.methods import language_model as loop
    from tuneforge.evaluate.run_metrics import read_metrics

    # (non-pad tokens, padded size) of each batch, in training order
    batches = count_batches(loop, lambda b: (int(b["attention_mask"].sum()), b["attention_mask"].numel()))
    step_ends, mark = step_clock()

    overrides = [
        f"output_dir={args.work / 'tuneforge-run'}", f"data.train=[{args.data}]", "data.validation=[]",
        f"model.name={args.model_dir}", "data.replay=null", "data.packing=false", "data.clean.dedup=false",
        "train.kl_to_base=0", f"train.max_steps={args.steps}", f"train.batch_size={BATCH_SIZE}", "train.grad_accum=1",
        f"train.learning_rate={LEARNING_RATE}", "train.lr_scheduler=cosine", "train.warmup_steps=0",
        "train.weight_decay=0", "train.max_grad_norm=1.0", f"train.max_seq_length={MAX_LEN}", "train.log_every=1",
        f"train.seed={SEED}", f"model.dtype={'bfloat16' if args.precision == 'bf16' else 'float32'}",
        f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}", f"lora.dropout={LORA['dropout']}",
        f"lora.target_modules={LORA['target_modules']}",
        "train.gradient_checkpointing=false", "train.preflight=off",
        "eval.general_check=false", "eval.prompts=null", "eval.every_steps=null", "checkpoint.every_steps=null",
        *args.tuneforge_set,
    ]
    config = load_config(CONFIG, overrides=overrides)
    result = driver.train(config, overwrite=True, stop=mark)
    metrics = [r for r in read_metrics(result.run_dir) if "train_loss" in r]
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    step_tokens = [b[0] for b in batches[: len(step_ends)]]
    if sum(step_tokens) != result.state.tokens_seen:
        raise SystemExit(f"counted {sum(step_tokens)} tokens, the loop counted {result.state.tokens_seen}")
    losses = [r["train_loss"] for r in metrics]
    return {
        **rates(step_ends, step_tokens, WARMUP_STEPS),
        "tokens": result.state.tokens_seen,
        "padded_tokens": sum(b[1] for b in batches[: len(step_ends)]),
        "all_steps_tokens_per_s": metrics[-1]["train_tokens_per_s"],
        "loop_wall_s": result.state.tokens_seen / metrics[-1]["train_tokens_per_s"],
        "final_loss": losses[-1], "last5_loss": sum(losses[-5:]) / len(losses[-5:]),
        "dataset_tokens": manifest["train_tokens"], "dataset_trained_tokens": manifest["trained_tokens"],
        "loss_mask": "assistant content + end-of-turn token (tuneforge's chat masking)",
        "options": f"chunked_loss={config.train.chunked_loss}, gradient_checkpointing="
                   f"{config.train.gradient_checkpointing}, fused_kernels={config.train.fused_kernels}, AdamW (fused)"
                   + "".join(f", --set {item}" for item in args.tuneforge_set),
        "peak_cuda_mb": cuda_peak_mb(),
    }


GENERATION_MARKERS = re.compile(r"{%-?\s*generation\s*-?%}")
# The template's string literals hold real newlines, not backslash-n escapes.
SMOLLM2_MESSAGE = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
SMOLLM2_MARKED = (
    "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
    "{% else %}" + SMOLLM2_MESSAGE + "{% endif %}"
)


def marked_template(tokenizer, records: list[dict]) -> str | None:
    """SmolLM2's chat template with {% generation %} around assistant content + <|im_end|>, if it is that
    template, and only if it renders every record to exactly the text the original does."""
    template = tokenizer.chat_template
    if SMOLLM2_MESSAGE not in template:
        return None
    marked = template.replace(SMOLLM2_MESSAGE, SMOLLM2_MARKED)
    for record in records:
        original = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        if tokenizer.apply_chat_template(record["messages"], tokenize=False, chat_template=marked) != original:
            return None
    return marked


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.training_args import OptimizerNames
    from trl import SFTConfig, SFTTrainer

    model_dir = args.model_dir
    records = [json.loads(line) for line in args.data.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assistant_only = False
    if args.trl_loss == "assistant":
        if GENERATION_MARKERS.search(tokenizer.chat_template or ""):
            mask = "assistant_only_loss=True (the model's own template)"
        elif (marked := marked_template(tokenizer, records[:200])) is not None:
            tokenizer.chat_template = marked
            mask = ("assistant_only_loss=True, with {% generation %} markers added to SmolLM2's template "
                    "(identical rendering): assistant content + <|im_end|>")
        else:
            args.trl_loss = "completion"
        assistant_only = args.trl_loss == "assistant"
    if args.trl_loss == "completion":
        records = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
        mask = "completion_only_loss (prompt/completion split at the last assistant message)"
    elif args.trl_loss == "full":
        mask = "full sequence (every token)"

    bf16 = args.precision == "bf16"
    config = SFTConfig(
        output_dir=str(args.work / "trl-run"), max_steps=args.steps, per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=SEED, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, bf16=bf16, gradient_checkpointing=False, max_length=MAX_LEN,
        packing=False, padding_free=False, assistant_only_loss=assistant_only, dataloader_num_workers=0,
        train_sampling_strategy=args.trl_sampler,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on a CPU-only machine without it
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")

    class Marks(TrainerCallback):
        def __init__(self):
            self.begin, self.step_ends, self.losses, self.num_tokens = 0.0, [], [], None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.monotonic())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])
            if logs and "num_tokens" in logs:
                self.num_tokens = logs["num_tokens"]

    marks = Marks()
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[marks])
    dataset = trainer.train_dataset
    dataset_tokens = sum(len(ids) for ids in dataset["input_ids"])
    if "labels" in dataset.column_names:  # TRL >= 1.x folds its masks into labels while preparing the data
        trained = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])
    else:
        trained = next((sum(sum(m) for m in dataset[c]) for c in ("assistant_masks", "completion_mask")
                        if c in dataset.column_names), dataset_tokens)
    batches: list[tuple[int, int]] = []
    collator = trainer.data_collator

    def counting_collator(examples):
        batch = collator(examples)
        batches.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    trainer.data_collator = counting_collator  # read when train() builds its dataloader
    trainer.train()
    steps = len(marks.step_ends)
    step_tokens = [b[0] for b in batches[:steps]]
    total = sum(step_tokens)
    if marks.num_tokens is not None and marks.num_tokens != total:
        print(f"note: TRL logged num_tokens {marks.num_tokens}, counted {total}", file=sys.stderr)
    return {
        **rates(marks.step_ends, step_tokens, WARMUP_STEPS),
        "tokens": total,
        "padded_tokens": sum(b[1] for b in batches[:steps]),
        "all_steps_tokens_per_s": total / (marks.step_ends[-1] - marks.begin),
        "loop_wall_s": marks.step_ends[-1] - marks.begin,
        "final_loss": marks.losses[-1], "last5_loss": sum(marks.losses[-5:]) / len(marks.losses[-5:]),
        "dataset_tokens": dataset_tokens, "dataset_trained_tokens": trained,
        "loss_mask": mask, "trl_num_tokens": marks.num_tokens,
        "options": f"gradient_checkpointing=False (TRL's default is True), optim={OptimizerNames(trainer.args.optim).value}, "
                   f"loss_type={trainer.args.loss_type}, packing=False, padding_free=False, "
                   f"train_sampling_strategy={trainer.args.train_sampling_strategy}",
        "peak_cuda_mb": cuda_peak_mb(),
    }


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the faster middle one of an even count)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


def run_child(name: str, args) -> dict:
    result_path, log_path = args.work / f"{name}.json", args.work / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", str(args.data),
               "--work", str(args.work), "--steps", str(args.steps), "--trl-loss", args.trl_loss,
               "--trl-sampler", args.trl_sampler, "--model-dir", str(args.model_dir), "--precision", args.precision,
               *[f"--tuneforge-set={item}" for item in args.tuneforge_set],
               "--result", str(result_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{name} child failed (exit {os.waitstatus_to_exitcode(status)}); log: {log_path}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["process_wall_s"] = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# Output.


def table(results: dict[str, dict], peak: float, flops_per_token: int) -> str:
    header = ["trainer", "steps", "tokens/s (after 3 warm-up steps)", "tokens/s (all steps)", "loop wall s",
              "non-pad tokens", "padding", "peak RSS MB", "peak CUDA MB", "final loss", "loss (last 5)", "MFU"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, r in results.items():
        mfu = r["tokens_per_s"] * flops_per_token / peak
        cuda = "-" if r["peak_cuda_mb"] is None else f"{r['peak_cuda_mb']:,.0f}"
        lines.append(
            f"| {name} | {r['steps']} | {r['tokens_per_s']:.1f} | {r['all_steps_tokens_per_s']:.1f} | "
            f"{r['loop_wall_s']:.1f} | {r['tokens']:,} | {1 - r['tokens'] / r['padded_tokens']:.1%} | "
            f"{r['peak_rss_mb']:,.0f} | {cuda} | {r['final_loss']:.3f} | {r['last5_loss']:.3f} | {mfu:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per trainer (the first 3 are warm-up)")
    parser.add_argument("--tokens", type=int, default=20_000, help="repeat the data to this many tokens")
    parser.add_argument("--only", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="alternate the trainers this many times and report each one's median run: the "
                             "shared machine's speed drifts by 10-20%% over minutes")
    parser.add_argument("--trl-loss", choices=["assistant", "completion", "full"], default="assistant",
                        help="the baseline's loss mask (see above)")
    parser.add_argument("--trl-sampler", choices=["random", "group_by_length"], default="random",
                        help="the baseline's batch order: TRL's default (random) or length-grouped batches")
    parser.add_argument("--random-init", type=Path, metavar="CONFIG",
                        help="train a random-weight model of this HF config's shape (see bench/configs/)")
    parser.add_argument("--tokenizer", type=Path, metavar="DIR",
                        help="tokenizer for --random-init (default: the embedded model's)")
    parser.add_argument("--tuneforge-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-file override for tuneforge only, e.g. train.fused_kernels=false (repeatable)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="both trainers' precision; auto: bf16 where it is native (CUDA, AVX512-BF16/AMX CPUs)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, runs, child logs)")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child_tuneforge(args) if args.child == "tuneforge" else child_trl(args)
        result["child_ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.result.write_text(json.dumps(result))
        return

    import torch

    from tuneforge.models.load import native_bf16

    cuda = torch.cuda.is_available()
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(torch.device("cuda" if cuda else "cpu")) else "fp32"
    peaks = {name: matmul_peak(name, "cuda" if cuda else "cpu") for name in ("float32", "bfloat16")}
    peak_name = "bfloat16" if args.precision == "bf16" else "float32"  # what the training matmuls run in
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {device}; matmul peak ({PEAK_SIZE['cuda' if cuda else 'cpu']}^2): "
          + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items()), file=sys.stderr, flush=True)
    args.work = Path(tempfile.mkdtemp(prefix="tuneforge-train-speed-"))
    if args.random_init:
        model_label = f"{args.random_init.name} shape, random weights"
        args.model_dir = random_model(args.random_init, args.tokenizer, args.work / "model", cuda)
    else:
        from tuneforge.models.resolve import resolve

        model_label, args.model_dir = MODEL, resolve(MODEL)
    sizes = parameter_counts(args.model_dir)
    args.data = args.work / "train.jsonl"
    data = write_data(args.data, args.tokens, args.model_dir)
    print(f"data: {data['records']} records ({data['source_records']} distinct), {data['tokens']:,} tokens; "
          f"work dir {args.work}"
          + (" (kept)" if args.keep else " (removed at the end; --keep keeps it)"), file=sys.stderr, flush=True)

    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    for round_number in range(1, args.rounds + 1):  # the trainers alternate, so a slow spell hits both
        for name in args.only:
            print(f"round {round_number}/{args.rounds}: training with {name} ({args.steps} steps) ...",
                  file=sys.stderr, flush=True)
            r = run_child(name, args)
            runs[name].append(r)
            print(f"finished {name}: {r['tokens_per_s']:.1f} tokens/s, process {r['process_wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
    results = {name: median_run(name_runs) for name, name_runs in runs.items()}

    peak = peaks[peak_name]
    peak_after = matmul_peak(peak_name, "cuda" if cuda else "cpu")  # did the machine change under us?
    print(f"\nTraining speed: {model_label} ({(sizes['n_base']) / 1e6:,.0f}M parameters), LoRA r={LORA['r']} alpha={LORA['alpha']} dropout={LORA['dropout']} "
          f"{LORA['target_modules']}, lr {LEARNING_RATE} cosine, batch {BATCH_SIZE} x grad_accum 1, "
          f"{args.steps} steps, max length {MAX_LEN}, padded batches (no packing, no padding-free), "
          f"{'bf16 autocast, bf16 base' if args.precision == 'bf16' else 'fp32'}; {device}")
    print(f"data: {data['records']} records repeated from {SOURCE.relative_to(ROOT)}, {data['tokens']:,} tokens")
    print(f"matmul peak: {peak / 1e9:,.1f} GFLOP/s ({peak_name}, {PEAK_SIZE['cuda' if cuda else 'cpu']}^2, measured at start; "
          f"{peak_after / 1e9:,.1f} again at the end); "
          + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in peaks.items() if k != peak_name))
    print(f"MFU = non-pad tokens/s x (4 x N_base + 6 x N_lora) / peak; N_base = {sizes['n_base']:,} "
          f"(all parameters, tied embedding = output head counted once), N_lora = {sizes['n_lora']:,}: "
          f"{sizes['flops_per_token'] / 1e6:,.1f} MFLOP per token\n")
    print(table(results, peak, sizes["flops_per_token"]))
    if args.rounds > 1:
        print(f"\n(each row: the median of {args.rounds} alternating rounds by tokens/s; every round: "
              + "; ".join(f"{name} " + ", ".join(f"{r['tokens_per_s']:.1f}" for r in name_runs)
                          for name, name_runs in runs.items()) + " tokens/s)")
    print()
    for name, r in results.items():
        print(f"{name}: loss mask {r['loss_mask']}; dataset {r['dataset_tokens']:,} tokens, "
              f"{r['dataset_trained_tokens']:,} trained; {r['options']}")
    if len(results) == 2:
        tf, trl = results["tuneforge"], results["trl"]
        print(f"\ntuneforge / TRL: tokens/s {tf['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
              f"peak RSS {tf['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x"
              + (f", peak CUDA memory {tf['peak_cuda_mb'] / trl['peak_cuda_mb']:.2f}x" if cuda else ""))
    if args.out:
        args.out.write_text(json.dumps({
            "model": model_label, "steps": args.steps, "warmup_steps": WARMUP_STEPS, "batch_size": BATCH_SIZE,
            "max_length": MAX_LEN, "learning_rate": LEARNING_RATE, "lora": LORA, "device": device,
            "data": data, "matmul_peak_flops": peaks, "mfu_peak": peak_name, "matmul_peak_after_flops": peak_after,
            **sizes, "results": results, "rounds": runs,
        }, indent=2))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
