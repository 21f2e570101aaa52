"""Decode speed of the built-in engine against a base commit's, in one run: serving and `generate` tokens/s.

Issue 21 asked why one stream decodes only ~16-20 tokens/s for SmolLM2-135M on this CPU and for
at least 3x that (and 2x the 8-client figure). This script measures the tree it sits in against
another checkout of tuneforge (`--base`, e.g. `git worktree add /work/wt/speed-base d61b149`),
alternating base and ours for `--rounds` rounds and printing medians and ratios, so the load of a
shared machine hits both alike:

- serve: `tuneforge serve MODEL` of that checkout (PYTHONPATH at its `src/`) in a process of its own,
  as it is deployed, then the same streaming openai clients for both (bench/engine_load.py's
  `measure`: 1 and 8 clients, each for --duration seconds, 64 tokens at temperature 0.7): output
  tokens/s and time to first token. The base decodes in float32 (it has no --dtype); ours once per
  `--dtypes` entry.
- generate: `models/generate.py`'s `generate_completions`, greedy, a fixed number of new tokens
  (no early stop), for one conversation and a batch of 8: generated tokens/s; then the serving
  engine without HTTP (serve/engine.py), 1 and 8 greedy requests at once. Each also per CPU-second
  of the measuring process (one torch thread: the work a token costs, less sensitive than wall
  time to what else the shared machine runs).

    PYTHONPATH=src .venv/bin/python bench/engine_speed.py --base /work/wt/speed-base --parts serve \
        --dtypes float32,bfloat16,int8 --rounds 2
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
sys.path.insert(0, str(HERE))
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
    """For each of --dtypes but float32: how often decoding in it gives the fp32 greedy reply, token for token,
    how far the two agree, and perplexity on the general-ability text (what the forgetting check measures)."""
    import copy

    import torch

    from serve_load import PROMPTS
    from tuneforge.data.formats import read_records
    from tuneforge.evaluate.evaluator import builtin_general_text, perplexity
    from tuneforge.models.generate import render_prompt, stop_token_ids
    from tuneforge.models.load import load_for_inference
    from tuneforge.models.packed import for_decoding

    torch.set_num_threads(args.threads) if args.threads else None
    model, tokenizer = load_for_inference(args.model)
    general = read_records(builtin_general_text())
    questions = list(dict.fromkeys(QUESTIONS + PROMPTS))
    kwargs = dict(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop_token_ids(model, tokenizer),
                  pad_token_id=tokenizer.pad_token_id)

    def replies(decoder) -> list[list[int]]:
        out = []
        for question in questions:
            ids = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": question}]), return_tensors="pt",
                            add_special_tokens=False)
            with torch.inference_mode():
                out.append(decoder.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1]:].tolist())
        return out

    with torch.inference_mode():
        exact_perplexity = perplexity(model, tokenizer, general, 8)[1]
    exact = replies(model)
    print(f"float32: general-text perplexity {exact_perplexity:.2f}")
    for dtype in [d for d in args.dtypes.split(",") if d != "float32"]:
        decoder = for_decoding(copy.deepcopy(model), dtype)
        with torch.inference_mode():
            rise = perplexity(decoder, tokenizer, general, 8)[1] / exact_perplexity - 1
        theirs = replies(decoder)
        same = sum(a == b for a, b in zip(exact, theirs))
        prefixes = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                    for a, b in zip(exact, theirs)]
        print(f"{dtype} vs float32 greedy, {len(questions)} prompts, up to {args.max_tokens} tokens: {same} identical "
              f"replies; tokens agreeing before the first difference: median {statistics.median(prefixes):g}, min "
              f"{min(prefixes)}; general-text perplexity {rise:+.2%}")


def run(tree: Path, argv: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def serve_figures(tree: Path, dtype: str | None, args) -> dict[str, float]:
    """`tuneforge serve` of `tree` in a process of its own; 1 and 8 streaming clients (engine_load.measure)."""
    import asyncio
    import tempfile

    from engine_load import measure, warm_up
    from serve_load import free_port

    port = free_port()
    command = [sys.executable, "-m", "tuneforge", "serve", args.model, "--port", str(port), "--no-log",
               "--max-new-tokens", str(max(args.max_tokens, 16))]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--dtype", dtype] if dtype else []  # the base has no --dtype: it decodes in float32
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree / "src")},
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            model = ready(url, process, log)
            asyncio.run(warm_up([(f"{url}/v1", model)], args))
            figures = {}
            for clients in (1, 8):
                row = asyncio.run(measure(f"{url}/v1", model, clients, args))
                figures[f"serve {clients} tok/s"] = row["output_tokens_per_s"]
                figures[f"serve {clients} TTFT p50 s"] = row["ttft_p50"]
            return figures
        finally:
            process.terminate()
            process.wait(120)


def ready(url: str, process: subprocess.Popen, log, timeout: float = 600.0) -> str:
    """The served model's name once the server answers /v1/models; the server's output if it exits first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{' '.join(process.args)} exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                return json.load(response)["data"][0]["id"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise SystemExit(f"{' '.join(process.args)} did not answer within {timeout:g} s")


def generate_figures(tree: Path, dtype: str, args) -> dict[str, float]:
    argv = [str(Path(__file__).resolve()), "--worker", "--dtype", dtype, "--max-tokens", str(args.max_tokens)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    out = run(tree, argv)
    return json.loads(next(row for row in out.splitlines() if row.startswith("RESULT "))[len("RESULT "):])


def measure(label: str, tree: Path, dtype: str | None, args) -> dict[str, float]:
    figures: dict[str, float] = {}
    if "serve" in args.parts:
        figures |= serve_figures(tree, dtype, args)
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
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each client count runs")
    parser.add_argument("--temperature", type=float, default=0.7, help="of the serving clients' requests")
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
          f"{args.max_tokens} new tokens; {args.duration:g} s per client count, temperature {args.temperature:g}")
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
