"""Load test of `tuneforge serve`: N concurrent streaming clients, with batching on and off, in one run.

Starts the server on a free loopback port with the model (the embedded SmolLM2-135M-Instruct by
default), runs N clients through the official `openai` package, each sending streaming chat
requests back to back, and prints requests/s, output tokens/s and the p50/p95 time to first
token and total latency; then the same with batching off (one request decoded at a time, the
same engine otherwise). Each mode runs exactly --duration seconds: at the deadline the clients
close their streams and the server cancels what is left. Output tokens are those the engine
generated in that window (exact, partly finished answers included), requests/s and latencies
count the requests that finished in it.

    .venv/bin/python bench/serve_load.py --clients 8 --duration 45 [--threads 1] [--dtype bfloat16]
    .venv/bin/python bench/serve_load.py --engines builtin,llama.cpp,vllm --duration 30   # engines (engine_load.py)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import openai

PROMPTS = [
    "What is the capital of France?", "Give me three tips for staying focused while studying.",
    "Explain what a hash table is in two sentences.", "Write a haiku about autumn rain.",
    "How do plants make their food?", "What is 17 times 3?", "Name a few uses of a paperclip.",
    "Why is the sky blue?", "Suggest a name for a small bakery.", "What should I pack for a day hike?",
    "Describe a cat to someone who has never seen one.", "How does a bicycle stay upright?",
]


@dataclass
class ClientResults:
    first_token: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # of finished requests
    errors: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(served, options):
    import uvicorn

    from tuneforge.serve.app import create_app

    app = create_app(served, options)
    server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, app.state.server.engine


async def client(openai_client, model: str, index: int, deadline: float, args, results: ClientResults) -> None:
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic()):
            await requests(openai_client, model, index, args, results)
    except TimeoutError:  # the deadline: the open stream is closed and the server cancels it
        pass


async def requests(openai_client, model: str, index: int, args, results: ClientResults) -> None:
    turn = 0
    while True:
        prompt = PROMPTS[(index + turn * 5) % len(PROMPTS)]
        turn += 1
        started = time.monotonic()
        first = None
        try:
            stream = await openai_client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                temperature=args.temperature, seed=index * 1000 + turn, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic() - started
                    results.first_token.append(first)
        except openai.APIError as exc:  # counted and shown, the run goes on
            results.errors += 1
            print(f"  client {index}: {type(exc).__name__}: {exc}")
            continue
        results.latency.append(time.monotonic() - started)


async def load(base_url: str, model: str, args, engine) -> tuple[ClientResults, float, int]:
    results = ClientResults()
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600) as openai_client:
        tokens_before, started = engine.stats.generated_tokens, time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(*(client(openai_client, model, i, deadline, args, results) for i in range(args.clients)))
        return results, time.monotonic() - started, engine.stats.generated_tokens - tokens_before


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_mode(served, batching: bool, args) -> dict:
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), batching=batching, max_batch_size=args.max_batch_size,
                           max_new_tokens=max(args.max_tokens, 16), max_concurrent=max(64, args.clients),
                           dtype=args.dtype, threads=args.engine_threads)
    server, thread, engine = start_server(served, options)
    try:
        results, wall, tokens = asyncio.run(load(f"http://127.0.0.1:{options.port}/v1", served.default, args, engine))
    finally:
        server.should_exit = True
        thread.join()
    stats = engine.stats
    return {
        "mode": "batching on" if batching else "batching off",
        "requests": len(results.latency), "errors": results.errors, "wall_s": wall,
        "requests_per_s": len(results.latency) / wall, "output_tokens_per_s": tokens / wall,
        "ttft_p50": percentile(results.first_token, 50), "ttft_p95": percentile(results.first_token, 95),
        "latency_p50": percentile(results.latency, 50), "latency_p95": percentile(results.latency, 95),
        "mean_batch": stats.decoded_rows / max(stats.decode_steps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=45.0, help="seconds each mode runs")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--modes", default="on,off", help="on, off or on,off")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--dtype", default="float32", help="decoding dtype: float32 or bfloat16 (tuneforge serve --dtype)")
    parser.add_argument("--engines", help="compare engines instead of batching modes: builtin,llama.cpp,vllm "
                        "(each behind tuneforge's API, and each fast engine against its own server; bench/engine_load.py)")
    parser.add_argument("--client-counts", default="1,8", help="with --engines: the client counts to run (default 1,8)")
    parser.add_argument("--quant", default="q8_0", help="with --engines: llama.cpp's GGUF quantisation (default q8_0)")
    parser.add_argument("--in-process", action="store_true", help="with --engines: run tuneforge's server in this "
                        "process, beside the clients (default: a process of its own, as deployed)")
    parser.add_argument("--rounds", type=int, default=1, help="with --engines: tuneforge / own server alternations")
    parser.add_argument("--llama-server", help="with --engines: llama.cpp's llama-server binary, or 'python' "
                        "(default: $TUNEFORGE_LLAMA_SERVER, else llama-server on PATH, else llama-cpp-python's server)")
    args = parser.parse_args()
    if args.engines:
        from engine_load import run_engines  # bench/ is on sys.path when run as a script

        run_engines(args)
        return

    import torch

    from tuneforge.serve import threads

    # as `tuneforge serve` does: this thread loads serially, the engine's thread takes the threads
    args.engine_threads = threads.for_the_engine(args.threads)
    from tuneforge.serve.served import load_served

    served = load_served(args.model)
    device = next(served.model.parameters()).device
    print(f"model {served.default} on {device} ({args.engine_threads} engine threads, {args.dtype}); {args.clients} streaming clients, "
          f"{args.duration:g} s per mode, max_tokens {args.max_tokens}, temperature {args.temperature}")
    rows = [run_mode(served, mode == "on", args) for mode in args.modes.split(",")]
    header = (f"{'mode':<14}{'requests':>9}{'errors':>7}{'req/s':>8}{'out tok/s':>11}{'TTFT p50':>10}{'TTFT p95':>10}"
              f"{'lat p50':>9}{'lat p95':>9}{'mean batch':>12}")
    print(header)
    for r in rows:
        print(f"{r['mode']:<14}{r['requests']:>9}{r['errors']:>7}{r['requests_per_s']:>8.2f}{r['output_tokens_per_s']:>11.1f}"
              f"{r['ttft_p50']:>9.2f}s{r['ttft_p95']:>9.2f}s{r['latency_p50']:>8.2f}s{r['latency_p95']:>8.2f}s"
              f"{r['mean_batch']:>12.1f}")
    if len(rows) == 2 and rows[1]["output_tokens_per_s"] > 0:
        print(f"batching on / off: {rows[0]['output_tokens_per_s'] / rows[1]['output_tokens_per_s']:.2f}x output tokens/s")
    print("continuous batching: requests join the running batch between decode steps (no waves)")


if __name__ == "__main__":
    main()
