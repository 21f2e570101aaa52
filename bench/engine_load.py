"""`bench/serve_load.py --engines builtin,llama.cpp,vllm`: each engine behind tuneforge's API, and each fast engine's own server.

One invocation, one model, the same clients: for every engine, `tuneforge serve --engine E` is started
in a process of its own, as it is deployed (llama.cpp and vLLM as its child process; --in-process runs
it in this process, uvicorn in a thread, beside the clients: the earlier setup), then 1 and 8
streaming chat clients (the official openai package) each run --duration seconds. Output tokens are
counted on the client side, the same way for every server: a finished request's usage, plus one per
content chunk of a request cut off at the deadline. Then the same load against the engine's own
server on the same weights, the baseline for tuneforge's overhead: the server tuneforge started as
its child (vLLM's OpenAI server; llama.cpp's llama-server, or llama-cpp-python's server where no
llama-server binary is found), its port directly: same process, same weights, no tuneforge in between.
--rounds N alternates tuneforge and the own server N times per client count (the machine's load
drifts; each round's ratio is printed).

Its own chat template and detokenizer answer there, ours through tuneforge; both stop at the
end-of-turn token, so answers have the same lengths on average, not the same text.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import openai

from serve_load import PROMPTS, free_port, percentile


@dataclass
class Tally:
    first_token: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    errors: int = 0


async def one_client(client, model: str, index: int, deadline: float, args, tally: Tally) -> None:
    turn = 0
    while time.monotonic() < deadline:
        prompt = PROMPTS[(index + turn * 5) % len(PROMPTS)]
        turn += 1
        started, first, chunks, finished = time.monotonic(), None, 0, False
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                    temperature=args.temperature, seed=index * 1000 + turn, stream=True,
                    stream_options={"include_usage": True})
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks += 1
                        if first is None:
                            first = time.monotonic() - started
                            tally.first_token.append(first)
                    if chunk.usage is not None:
                        tally.tokens += chunk.usage.completion_tokens
                        finished = True
        except TimeoutError:
            pass
        except openai.APIError as exc:
            tally.errors += 1
            print(f"  client {index}: {type(exc).__name__}: {exc}")
            continue
        if finished:
            tally.requests += 1
        else:
            tally.tokens += chunks


async def measure(base_url: str, model: str, clients: int, args) -> dict:
    tally = Tally()
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600) as client:
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(*(one_client(client, model, i, deadline, args, tally) for i in range(clients)))
        wall = time.monotonic() - started
    return {"clients": clients, "requests": tally.requests, "errors": tally.errors,
            "output_tokens_per_s": tally.tokens / wall, "ttft_p50": percentile(tally.first_token, 50)}


def build_app(engine: str, args, port: int):
    from tuneforge.serve import threads
    from tuneforge.serve.app import create_app
    from tuneforge.serve.options import ServeOptions
    from tuneforge.serve.served import load_served

    # as `tuneforge serve` does: with the built-in engine this thread loads serially, the engine's thread takes them
    engine_threads = threads.for_the_engine(args.threads) if engine == "builtin" else args.threads
    served = load_served(args.model)
    options = ServeOptions(port=port, engine=engine, engine_quant=args.quant, threads=engine_threads,
                           max_new_tokens=max(args.max_tokens, 16), max_concurrent=64, dtype=args.dtype,
                           max_batch_size=args.max_batch_size, llama_server=args.llama_server)
    return create_app(served, options), served.default


def describe(state, model: str) -> dict:
    """What the measuring side needs: the served name, and the child server's port and name (None: builtin)."""
    child = state.engine if hasattr(state.engine, "port") else None
    if child is None:
        return {"model": model, "child_port": None, "own": None}
    own = "llama.cpp's own llama-server" if getattr(child, "binary", None) else (
        "llama-cpp-python's own server" if child.name == "llama.cpp" else "vLLM's own server")
    return {"model": model, "child_port": child.port, "own": own}


def serve_for_bench(argv: list[str]) -> None:
    """`engine_load.py --serve ENGINE ...`: tuneforge's server in this process (uvicorn in the main thread, so
    SIGTERM drains it and stops its child); prints describe() as one JSON line once it listens."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    for flag in ("--serve", "--model", "--quant", "--llama-server", "--dtype"):
        parser.add_argument(flag)
    for flag in ("--port", "--threads", "--max-tokens", "--max-batch-size"):
        parser.add_argument(flag, type=int)
    args = parser.parse_args(argv)
    app, model = build_app(args.serve, args, args.port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))

    def announce() -> None:
        while not server.started:
            time.sleep(0.1)
        print(json.dumps(describe(app.state.server, model)), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()


@contextmanager
def tuneforge_server(engine: str, args):
    """`tuneforge serve --engine E`, yielding (its /v1 URL, describe()). In a process of its own by default, as it
    is deployed: in this process the benchmark's own clients would share its GIL, which the engine's own server,
    a process of its own, does not (--in-process measures it that way)."""
    port = free_port()
    if args.in_process:
        import uvicorn

        app, model = build_app(engine, args, port)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.1)
        try:
            yield f"http://127.0.0.1:{port}/v1", describe(app.state.server, model)
        finally:
            server.should_exit = True
            thread.join(120)
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", engine, "--model", args.model, "--port",
               str(port), "--quant", args.quant, "--max-tokens", str(args.max_tokens), "--max-batch-size",
               str(args.max_batch_size), "--dtype", args.dtype]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--llama-server", args.llama_server] if args.llama_server else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"tuneforge serve --engine {engine} did not start (exit code {process.wait()})")
        yield f"http://127.0.0.1:{port}/v1", json.loads(line)
    finally:
        process.terminate()
        process.wait(120)


async def warm_up(servers: list[tuple[str, str]], args) -> None:
    """Two requests to each server before anything is measured (first-request costs land in no round)."""
    for url, model in servers:
        async with openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=2, timeout=600) as client:
            for prompt in PROMPTS[:2]:
                await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=args.max_tokens, temperature=args.temperature)


def run_engine(engine: str, counts: list[int], args) -> list[dict]:
    """tuneforge --engine E and (for a fast engine) its child server directly, alternated per round."""
    rows = []
    with tuneforge_server(engine, args) as (url, info):
        own_url = f"http://127.0.0.1:{info['child_port']}/v1" if info["child_port"] is not None else None
        asyncio.run(warm_up([(url, info["model"])] + ([(own_url, "tuneforge-served")] if own_url else []), args))
        for clients in counts:
            for round_ in range(1, args.rounds + 1):
                rows.append({"server": f"tuneforge --engine {engine}", "round": round_,
                             **asyncio.run(measure(url, info["model"], clients, args))})
                if own_url is not None:
                    rows.append({"server": info["own"], "round": round_,
                                 **asyncio.run(measure(own_url, "tuneforge-served", clients, args))})
    return rows


def report(rows: list[dict]) -> None:
    print(f"{'server':<34}{'round':>6}{'clients':>8}{'requests':>9}{'errors':>7}{'out tok/s':>11}{'TTFT p50':>10}")
    for r in rows:
        print(f"{r['server']:<34}{r['round']:>6}{r['clients']:>8}{r['requests']:>9}{r['errors']:>7}"
              f"{r['output_tokens_per_s']:>11.1f}{r['ttft_p50']:>9.2f}s")
    for i, r in enumerate(rows[:-1]):
        own = rows[i + 1]
        if r["server"].startswith("tuneforge --engine ") and not own["server"].startswith("tuneforge") \
                and own["output_tokens_per_s"] > 0:
            print(f"{r['server']} / {own['server']}, {r['clients']} client(s), round {r['round']}: "
                  f"{r['output_tokens_per_s'] / own['output_tokens_per_s']:.2f}x output tokens/s")


def run_engines(args) -> None:
    counts = [int(c) for c in args.client_counts.split(",")]
    engines = args.engines.split(",")
    where = "in this process" if args.in_process else "in a process of its own"
    print(f"model {args.model}; engines {', '.join(engines)}; clients {counts}; {args.duration:g} s each; "
          f"max_tokens {args.max_tokens}, temperature {args.temperature}; llama.cpp GGUF {args.quant}; "
          f"tuneforge serve {where}")
    rows = []
    for engine in engines:
        rows += run_engine(engine, counts, args)
    report(rows)


if __name__ == "__main__":
    serve_for_bench(sys.argv[1:])
