"""Load test of `POST /v1/classify`: N concurrent clients, with shared rounds and with one request per round.

Serves a classifier through serve's main app (tuneforge.serve.app.create_app) on a free loopback
port: a run directory given with --model, else the embedded all-MiniLM-L6-v2 with a fresh 6-class
head (speed does not depend on the head's weights). N client threads send one-text requests back
to back (the customer messages of examples/intents/test.jsonl) for --duration seconds. Mode
`shared`: the worker classifies every request waiting when a round begins together (what the
server does); mode `single`: the same server with the worker taking one request per round (the
baseline: a forward pass per request, as the separate classifier app before issue 17 did).
Prints requests/s, latency p50/p95 and the mean requests per round, for both modes in one run.

    .venv/bin/python bench/classify_load.py --clients 8 --duration 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_minilm():
    """The embedded MiniLM with an untrained head over the intents' 6 labels."""
    from tuneforge.models.labels import LabelSet
    from tuneforge.models.classifier import Classifier, ClassifierInfo, load_with_head
    from tuneforge.models.load import load_tokenizer
    from tuneforge.models.resolve import resolve

    path = resolve("embedded:minilm-l6")
    tokenizer = load_tokenizer(path)
    labels = LabelSet(("account_login", "cancel_or_change", "order_status", "payment_billing", "product_question",
                       "returns_refunds"), False)
    model = load_with_head(path, labels, tokenizer.pad_token_id).eval()
    return Classifier(model, tokenizer, ClassifierInfo("embedded:minilm-l6", "full", labels, 0.5, 128))


def run_mode(classifier, shared: bool, texts: list[str], args) -> dict:
    import uvicorn

    from tuneforge.serve.app import create_app
    from tuneforge.serve.classifier import ServedClassifier
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), max_batch_size=args.max_batch_size)
    app = create_app(ServedClassifier(classifier, "bench", "bench"), options)
    worker = app.state.server.engine
    if not shared:
        worker.max_texts = 1  # a round ends after its first request
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=options.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{options.port}/v1/classify"
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + args.duration

    def client(index: int) -> None:
        n = index
        while time.monotonic() < deadline:
            body = json.dumps({"input": texts[n % len(texts)]}).encode()
            n += args.clients
            started = time.monotonic()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                with lock:
                    latencies.append(time.monotonic() - started)
            except OSError:
                with lock:
                    errors[0] += 1

    started = time.monotonic()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    elapsed = time.monotonic() - started
    stats = worker.stats
    server.should_exit = True
    thread.join(30)
    ordered = sorted(latencies)
    return {"mode": "shared rounds" if shared else "one request per round", "requests/s": len(latencies) / elapsed,
            "p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "requests per round": stats.requests / max(stats.rounds, 1), "errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a classifier run directory (default: the embedded MiniLM, fresh head)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each mode runs")
    parser.add_argument("--max-batch-size", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tuneforge.models.classifier import load_classifier

    classifier = load_classifier(args.model) if args.model else fresh_minilm()
    texts = [json.loads(line)["text"] for line in (ROOT / "examples/intents/test.jsonl").read_text().splitlines()]
    rows = [run_mode(classifier, shared, texts, args) for shared in (True, False)]
    print(f"{args.clients} clients, {args.duration:g} s per mode, torch threads {torch.get_num_threads()}")
    print(f"| mode | requests/s | latency p50 / p95 | requests per round | errors |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['mode']} | {row['requests/s']:.1f} | {row['p50'] * 1000:.0f} ms / {row['p95'] * 1000:.0f} ms "
              f"| {row['requests per round']:.1f} | {row['errors']} |")
    print(f"shared / single: {rows[0]['requests/s'] / rows[1]['requests/s']:.2f}x requests/s")


if __name__ == "__main__":
    main()
