"""Load on `tuneforge platform` while a job trains: 20 clients polling job status, 8 streaming chats; the job's tokens/s.

Starts `tuneforge platform MODEL` (a real server process, the embedded SmolLM2-135M-Instruct by
default), uploads examples/identity/train.jsonl and runs the same fine-tuning job three times:
alone, then under load, then alone again (the baseline is the mean of the two alone runs, so a
drift of the shared machine during the bench shows as their difference). Under load, 20 clients
poll `jobs.retrieve` and `jobs.list_events` back to back (a short sleep between polls) and 8
clients stream chat answers from the base model back to back, all through the official `openai`
package, for as long as the job trains. A job's tokens/s is the training loop's own figure for the
whole run (train_tokens_per_s at its last step: tokens trained / seconds of the loop), so model
loading and data preparation are not in it. Prints the requests made, the failures (any error
counts), the poll and chat latencies, the CPU time the server and the bench's own clients used during the load
(they share the machine with the job), and the job's tokens/s under load beside its tokens/s alone.

    .venv/bin/python bench/platform_load.py [--steps 30] [--server-threads 1] [--job-threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn rain.", "Why is the sky blue?",
           "Explain what a hash table is in two sentences.", "How do plants make their food?",
           "Suggest a name for a small bakery.", "What should I pack for a day hike?", "What is 17 times 3?"]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float | None, error: str | None = None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(seconds)
            else:
                self.errors.append(error)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, root: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuneforge", "platform", args.model, "--port", str(port), "--platform-dir",
               str(root), "--registry", str(root / "registry.db"), "--no-log", "--max-concurrent", "256"]
    if args.server_threads:
        command += ["--threads", str(args.server_threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("ab"))
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit((root / "server.log").read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)


def poller(client: openai.OpenAI, job_id: str, stop: threading.Event, tally: Tally, pause_s: float) -> None:
    turn = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            if turn % 2:
                client.fine_tuning.jobs.list_events(job_id, limit=20)
            else:
                client.fine_tuning.jobs.retrieve(job_id)
            tally.add(time.monotonic() - started)
        except openai.APIError as exc:
            tally.add(None, f"poll: {type(exc).__name__}: {exc}")
        turn += 1
        stop.wait(pause_s)


def chatter(client: openai.OpenAI, model: str, index: int, stop: threading.Event, tally: Tally, max_tokens: int) -> None:
    turn = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPTS[(index + turn) % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0.7, seed=index * 1000 + turn, stream=True)
            for _ in stream:
                pass
            tally.add(time.monotonic() - started)
        except openai.APIError as exc:
            tally.add(None, f"chat: {type(exc).__name__}: {exc}")
        turn += 1


def create_job(client: openai.OpenAI, file_id: str, args) -> str:
    run = {"train": {"max_steps": args.steps, "max_seq_length": 256,
                     **({"threads": args.job_threads} if args.job_threads else {})}}
    return client.fine_tuning.jobs.create(model=args.model, training_file=file_id, seed=0,
                                          hyperparameters={"batch_size": 4}, extra_body={"tuneforge": run}).id


def finished_speed(client: openai.OpenAI, job_id: str, cpu: list[float] | None = None, root: Path | None = None
                   ) -> float:
    """The loop's tokens/s of a job, once it succeeded; `cpu` gets its process's mean CPU share (cores)."""
    sampler = JobCPU(root, job_id) if root is not None else None
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    if sampler is not None and cpu is not None:
        cpu.append(sampler.cores())
    if job.status != "succeeded":
        raise SystemExit(f"job {job_id} {job.status}: {job.error}")
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=1000) if e.type == "metrics"
              and e.data.get("tokens_per_s") is not None]
    return max(events, key=lambda e: e.data["step"]).data["tokens_per_s"]


def under_load(base_url: str, file_id: str, args, server_pid: int, root: Path, cpu: list[float]) -> tuple[float, Tally, Tally, float, float, float]:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    job_id = create_job(client, file_id, args)
    while (status := client.fine_tuning.jobs.retrieve(job_id).status) != "running":
        if status not in ("validating_files", "queued"):
            raise SystemExit(f"job {job_id} {status} before the load began")
        time.sleep(0.2)
    stop, polls, chats = threading.Event(), Tally(), Tally()
    clients = [openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
               for _ in range(args.pollers + args.chats)]
    threads = [threading.Thread(target=poller, args=(clients[i], job_id, stop, polls, args.poll_pause))
               for i in range(args.pollers)]
    threads += [threading.Thread(target=chatter, args=(clients[args.pollers + i], args.model, i, stop, chats,
                                                       args.max_tokens)) for i in range(args.chats)]
    started, server_cpu = time.monotonic(), cpu_seconds(server_pid)
    clients_cpu = resource.getrusage(resource.RUSAGE_SELF)
    for thread in threads:
        thread.start()
    speed = finished_speed(client, job_id, cpu, root)
    stop.set()
    for thread in threads:
        thread.join()
    used = resource.getrusage(resource.RUSAGE_SELF)
    clients_cpu = used.ru_utime + used.ru_stime - clients_cpu.ru_utime - clients_cpu.ru_stime
    return speed, polls, chats, time.monotonic() - started, cpu_seconds(server_pid) - server_cpu, clients_cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (the server's threads, not its job's child process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class JobCPU:
    """Samples the CPU time of a job's training process (found by its run file) while it lives: its share of the CPU."""

    def __init__(self, root: Path, job_id: str):
        self.run_file = str(root / "runs" / job_id / "run.yaml").encode()
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        pid = None
        while not self.stop.wait(0.5):
            try:
                pid = pid or next(p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                                  if self.run_file in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0"))
                reading = (time.monotonic(), cpu_seconds(pid))
            except (StopIteration, OSError):
                continue
            self.first, self.last = self.first or reading, reading

    def cores(self) -> float:
        self.stop.set()
        self.thread.join()
        if not self.first or self.last[0] <= self.first[0]:
            return float("nan")
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "identity" / "train.jsonl")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each job (batch 4)")
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--poll-pause", type=float, default=0.25, help="seconds between one poller's requests")
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--server-threads", type=int, help="torch threads of the server (default: one per core)")
    parser.add_argument("--job-threads", type=int, help="torch threads of the job (default: one per core)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root, port = Path(tmp), free_port()
        server = start_server(args, root, port)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
            file_id = client.files.create(file=args.data.open("rb"), purpose="fine-tune").id
            cpu: list[float] = []  # the job process's CPU share: alone, under load, alone
            alone_before = finished_speed(client, create_job(client, file_id, args), cpu, root)
            loaded, polls, chats, wall, server_cpu, clients_cpu = under_load(base_url, file_id, args, server.pid, root,
                                                                             cpu)
            alone_after = finished_speed(client, create_job(client, file_id, args), cpu, root)
        finally:
            server.terminate()
            server.wait(120)
    alone = (alone_before + alone_after) / 2
    print(f"model {args.model}; job: {args.steps} steps of batch 4; load for {wall:.0f} s: {args.pollers} pollers "
          f"(retrieve / list_events, {args.poll_pause:g} s apart), {args.chats} streaming chats of {args.max_tokens} "
          f"tokens; server threads {args.server_threads or 'default'}, job threads {args.job_threads or 'default'}")
    print(f"status polls: {len(polls.latencies)} answered, {len(polls.errors)} failed; "
          f"p50 {pct(polls.latencies, 50) * 1000:.0f} ms, p95 {pct(polls.latencies, 95) * 1000:.0f} ms")
    print(f"streaming chats: {len(chats.latencies)} answered, {len(chats.errors)} failed; "
          f"p50 {pct(chats.latencies, 50):.2f} s, p95 {pct(chats.latencies, 95):.2f} s")
    print(f"CPU during the load: server {server_cpu:.0f} s ({server_cpu / wall:.2f} cores), the bench's clients "
          f"{clients_cpu:.0f} s ({clients_cpu / wall:.2f} cores), on the same machine as the job")
    for error in (polls.errors + chats.errors)[:10]:
        print("  " + error)
    print(f"job tokens/s: alone {alone_before:.0f} (before) and {alone_after:.0f} (after), mean {alone:.0f}; "
          f"under load {loaded:.0f}: {100 * (1 - loaded / alone):.0f}% lower")
    print(f"the job process's CPU share (cores, over its life): alone {cpu[0]:.2f} and {cpu[2]:.2f}, under load "
          f"{cpu[1]:.2f}")


if __name__ == "__main__":
    main()
