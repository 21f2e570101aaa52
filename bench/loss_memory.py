"""Peak memory and time of one LoRA training step: plain vs chunked loss, with and without activation checkpointing.

Each variant runs in a fresh child process (peak RSS is per process and never goes down), on the
embedded SmolLM2-135M with LoRA r=16 on all linear layers, fp32 on CPU, one batch of random tokens
whose second half is trained (as an assistant reply after a prompt would be).  The plain variant is
the baseline: full-batch logits, then cross-entropy.

    python bench/loss_memory.py                      # batch 8 x 512
    python bench/loss_memory.py --batch 4 --length 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = {
    "plain loss (baseline)": {"chunked": False, "checkpointing": False},
    "chunked loss": {"chunked": True, "checkpointing": False},
    "plain loss + activation checkpointing": {"chunked": False, "checkpointing": True},
    "chunked loss + activation checkpointing": {"chunked": True, "checkpointing": True},
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(batch: int, length: int, chunked: bool, checkpointing: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.data.template import IGNORE
    from tuneforge.models.load import load_causal_lm
    from tuneforge.models.resolve import resolve
    from tuneforge.train.loss import loss_sum
    from tuneforge.train.setup import with_checkpointing

    torch.manual_seed(0)
    model = load_causal_lm(resolve("embedded:smollm2-135m-instruct"), torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model = with_checkpointing(model, checkpointing).train()
    input_ids = torch.randint(0, model.config.vocab_size, (batch, length))
    labels = input_ids.clone()
    labels[:, : length // 2] = IGNORE
    data = {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}
    loss_sum(model, {k: v[:1, :64] for k, v in data.items()}, chunked=chunked)[0].backward()  # warm-up
    model.zero_grad()
    before = peak_mb()
    started = time.perf_counter()
    value, _ = loss_sum(model, data, chunked=chunked)
    value.backward()
    seconds = time.perf_counter() - started
    return {"loss": value.item() / int((labels[:, 1:] != IGNORE).sum()), "seconds": seconds,
            "peak_mb": peak_mb(), "before_step_mb": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batch, args.length, **VARIANTS[args.child])))
        return
    tokens = args.batch * args.length
    print(f"one LoRA step, batch {args.batch} x {args.length} tokens ({tokens // 2:,} trained), fp32 CPU")
    print(f"| variant | peak RSS MB | step s | loss per trained token |\n| --- | --- | --- | --- |")
    results = {}
    for name in VARIANTS:
        output = subprocess.run([sys.executable, __file__, "--child", name, "--batch", str(args.batch),
                                 "--length", str(args.length)], capture_output=True, text=True, check=True)
        result = json.loads(output.stdout.strip().splitlines()[-1])
        results[name] = result
        print(f"| {name} | {result['peak_mb']:,.0f} | {result['seconds']:.2f} | {result['loss']:.5f} |", flush=True)
    base = results["plain loss (baseline)"]
    for name, result in results.items():
        if name != "plain loss (baseline)":
            print(f"{name}: {result['peak_mb'] / base['peak_mb']:.2f}x the baseline's peak RSS, "
                  f"{result['seconds'] / base['seconds']:.2f}x its step time")


if __name__ == "__main__":
    main()
