"""`bench/serve_load.py --engines builtin,llama.cpp,vllm`: each engine behind tuneforge's API, and each fast engine's own server.

One invocation, one model, the same clients: for every engine, `tuneforge serve --engine E` is started
in process (uvicorn in a thread; llama.cpp and vLLM as its child process), then 1 and 8
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
import threading
import time
from dataclasses import dataclass, field

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


def start_tuneforge(engine: str, args):
    import uvicorn

    from tuneforge.serve.app import create_app
    from tuneforge.serve.options import ServeOptions
    from tuneforge.serve.served import load_served

    served = load_served(args.model)
    options = ServeOptions(port=free_port(), engine=engine, engine_quant=args.quant, threads=args.threads,
                           max_new_tokens=max(args.max_tokens, 16), max_concurrent=64,
                           max_batch_size=args.max_batch_size, llama_server=args.llama_server)
    app = create_app(served, options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=options.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.1)
    return server, thread, app.state.server, f"http://127.0.0.1:{options.port}/v1", served.default


def own_label(engine) -> str:
    if getattr(engine, "binary", None):
        return "llama.cpp's own llama-server"
    return "llama-cpp-python's own server" if engine.name == "llama.cpp" else "vLLM's own server"


def run_engine(engine: str, counts: list[int], args) -> list[dict]:
    """tuneforge --engine E and (for a fast engine) its child server directly, alternated per round."""
    server, thread, state, url, model = start_tuneforge(engine, args)
    rows = []
    try:
        child = None if engine == "builtin" else state.engine
        for clients in counts:
            for round_ in range(1, args.rounds + 1):
                rows.append({"server": f"tuneforge --engine {engine}", "round": round_,
                             **asyncio.run(measure(url, model, clients, args))})
                if child is not None:
                    own_url = f"http://127.0.0.1:{child.port}/v1"
                    rows.append({"server": own_label(child), "round": round_,
                                 **asyncio.run(measure(own_url, "tuneforge-served", clients, args))})
    finally:
        server.should_exit = True
        thread.join(120)
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
    print(f"model {args.model}; engines {', '.join(engines)}; clients {counts}; {args.duration:g} s each; "
          f"max_tokens {args.max_tokens}, temperature {args.temperature}; llama.cpp GGUF {args.quant}")
    rows = []
    for engine in engines:
        rows += run_engine(engine, counts, args)
    report(rows)
