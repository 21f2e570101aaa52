"""Decode speed of the built-in engine against a base commit's, in one run: serving and `generate` tokens/s.

Issue 21 asked why one stream decodes only ~16-20 tokens/s for SmolLM2-135M on this CPU and for
at least 3x that (and 2x the 8-client figure). This script measures the tree it sits in against
another checkout of tuneforge (`--base`, e.g. `git worktree add /work/wt/speed-base d61b149`), each
in its own process with PYTHONPATH pointing at that checkout's `src/`, alternating base and ours
for `--rounds` rounds and printing medians, so the load of a shared machine hits both alike:

- serve: that checkout's own `bench/serve_load.py` (streaming openai clients, batching on), for 1
  and 8 clients: output tokens/s and time to first token. Ours runs once per `--dtypes` entry.
- generate: `models/generate.py`'s `generate_completions`, greedy, a fixed number of new tokens
  (no early stop), for one conversation and a batch of 8: generated tokens/s; then the serving
  engine without HTTP (serve/engine.py), 1 and 8 greedy requests at once. Each also per CPU-second
  of the measuring process (one torch thread: the work a token costs, less sensitive than wall
  time to what else the shared machine runs).

    PYTHONPATH=src .venv/bin/python bench/engine_speed.py --base /work/wt/speed-base --threads 1
    PYTHONPATH=src .venv/bin/python bench/engine_speed.py --parts agreement --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTIONS = ["Why is the sky blue?", "Write a haiku about autumn rain.", "What is 17 times 3?",
             "How do plants make their food?", "Give me three tips for staying focused while studying.",
             "Explain what a hash table is in two sentences.", "Suggest a name for a small bakery.",
             "What should I pack for a day hike?"]


def generate_worker(args) -> None:
    """Runs inside the measured checkout: tokens/s of generate_completions for batch sizes 1 and 8."""
    import torch

    from tuneforge.models.generate import Sampling, generate_completions
    from tuneforge.models.load import load_for_inference

    torch.set_num_threads(args.threads) if args.threads else None
    model, tokenizer = load_for_inference(args.model)
    if args.dtype != "float32":
        from tuneforge.models.packed import for_decoding

        model = for_decoding(model, args.dtype)
    model.generation_config.min_new_tokens = args.max_tokens  # every reply runs the full length
    sampling = Sampling(max_new_tokens=args.max_tokens)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    generate_completions(model, tokenizer, conversations[:1], Sampling(max_new_tokens=4))  # warm up
    rates = {}
    for batch in (1, 8):
        started, cpu = time.perf_counter(), time.process_time()
        generate_completions(model, tokenizer, conversations[:batch], sampling, batch_size=batch)
        rates[f"generate {batch} tok/s"] = batch * args.max_tokens / (time.perf_counter() - started)
        rates[f"generate {batch} tok/CPU-s"] = batch * args.max_tokens / (time.process_time() - cpu)
    rates |= engine_rates(model, tokenizer, conversations, args)
    print("RESULT " + json.dumps(rates))


def engine_rates(model, tokenizer, conversations, args) -> dict[str, float]:
    """The serving engine without HTTP: 1 and 8 greedy requests submitted at once, tokens/s and per CPU-second."""
    import threading

    from tuneforge.models.generate import render_prompt
    from tuneforge.serve.engine import Done, Engine, Request, SamplingParams

    engine = Engine(model, tokenizer)
    engine.start()
    prompts = [tokenizer.encode(render_prompt(tokenizer, c), add_special_tokens=False) for c in conversations]
    model.generation_config.min_new_tokens = None
    rates = {}
    for clients in (1, 8):
        finished = threading.Semaphore(0)
        before, started, cpu = engine.stats.generated_tokens, time.perf_counter(), time.process_time()
        for prompt in prompts[:clients]:
            sink = lambda event: finished.release() if isinstance(event, Done) else None  # noqa: E731
            engine.submit(Request(prompt, SamplingParams(max_tokens=args.max_tokens, temperature=0), sink))
        for _ in range(clients):
            finished.acquire()
        tokens = engine.stats.generated_tokens - before
        rates[f"engine {clients} tok/s"] = tokens / (time.perf_counter() - started)
        rates[f"engine {clients} tok/CPU-s"] = tokens / (time.process_time() - cpu)
    engine.shutdown()
    return rates


def agreement(args) -> None:
    """How often bf16 decoding gives the fp32 greedy reply, token for token, and how far the two agree."""
    import copy

    import torch

    from tuneforge.models.generate import render_prompt, stop_token_ids
    from tuneforge.models.load import load_for_inference
    from tuneforge.models.packed import for_decoding

    torch.set_num_threads(args.threads) if args.threads else None
    model, tokenizer = load_for_inference(args.model)
    bf16 = for_decoding(copy.deepcopy(model), "bfloat16")
    sys.path.insert(0, str(HERE))
    from serve_load import PROMPTS

    questions = QUESTIONS + PROMPTS
    same, prefixes = 0, []
    for question in dict.fromkeys(questions):
        ids = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": question}]), return_tensors="pt",
                        add_special_tokens=False)
        kwargs = dict(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop_token_ids(model, tokenizer),
                      pad_token_id=tokenizer.pad_token_id)
        with torch.inference_mode():
            a = model.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1]:].tolist()
            b = bf16.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1]:].tolist()
        same += a == b
        prefixes.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    print(f"bf16 vs fp32 greedy, {len(prefixes)} prompts, up to {args.max_tokens} tokens: {same} identical replies; "
          f"tokens agreeing before the first difference: median {statistics.median(prefixes):g}, min {min(prefixes)}")


def run(tree: Path, argv: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def serve_figures(tree: Path, dtype: str | None, clients: int, args) -> dict[str, float]:
    argv = [str(tree / "bench" / "serve_load.py"), "--clients", str(clients), "--modes", "on",
            "--duration", str(args.duration), "--max-tokens", str(args.max_tokens)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--dtype", dtype] if dtype else []  # the base's serve_load has no --dtype: it decodes in float32
    line = next(row for row in run(tree, argv).splitlines() if row.startswith("batching on"))
    fields = line.split()  # batching on REQUESTS ERRORS REQ/S TOK/S TTFT50 ...
    return {f"serve {clients} tok/s": float(fields[5]), f"serve {clients} TTFT p50 s": float(fields[6].rstrip("s"))}


def generate_figures(tree: Path, dtype: str, args) -> dict[str, float]:
    argv = [str(Path(__file__).resolve()), "--worker", "--dtype", dtype, "--max-tokens", str(args.max_tokens)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    out = run(tree, argv)
    return json.loads(next(row for row in out.splitlines() if row.startswith("RESULT "))[len("RESULT "):])


def measure(label: str, tree: Path, dtype: str | None, args) -> dict[str, float]:
    figures: dict[str, float] = {}
    if "serve" in args.parts:
        for clients in (1, 8):
            figures |= serve_figures(tree, dtype, clients, args)
    if "generate" in args.parts:
        figures |= generate_figures(tree, dtype or "float32", args)
    print(f"  {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="a checkout of the base commit (its src/ and bench/)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="ours runs in each of these")
    parser.add_argument("--parts", default="serve,generate", help="serve, generate, or agreement (bf16 against "
                        "fp32 greedy replies, ours only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each serve_load run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads in every measured process")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return generate_worker(args)
    if "agreement" in args.parts:
        return agreement(args)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    ours = HERE.parent
    configs = [(f"ours {d}", ours, d) for d in args.dtypes.split(",")]
    if args.base:
        configs.insert(0, ("base float32", args.base.resolve(), None))
    print(f"{len(configs)} configurations x {args.rounds} rounds, alternating; threads {args.threads or 'default'}; "
          f"{args.max_tokens} new tokens; serve_load {args.duration:g} s per run, temperature 0.7")
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in configs}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}", flush=True)
        for label, tree, dtype in configs:
            results[label].append(measure(label, tree, dtype, args))
    report(results)


def report(results: dict[str, list[dict[str, float]]]) -> None:
    medians = {label: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for label, rounds in results.items()}
    keys = list(next(iter(medians.values())))
    print(f"\nmedians of {len(next(iter(results.values())))} rounds")
    print(f"{'':<16}" + "".join(f"{k:>21}" for k in keys))
    base = medians.get("base float32")
    for label, figures in medians.items():
        print(f"{label:<16}" + "".join(f"{figures[k]:>21.2f}" for k in keys))
        if base and label != "base float32":
            print(f"{'  / base':<16}" + "".join(f"{figures[k] / base[k]:>20.2f}x" for k in keys))


if __name__ == "__main__":
    main()
