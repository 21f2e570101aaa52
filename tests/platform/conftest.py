"""Platform fixtures: `tuneforge platform`'s app on the tiny random model, in a thread, with its state in a temp dir.

Jobs train in child processes (`python -m tuneforge train`), which inherit TUNEFORGE_HOME and
PYTHONPATH from the test process, so they train with the code under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import chat_records
from tests.serve.conftest import free_port, server_thread

# What a job on the tiny model needs beyond OpenAI's fields: a short run, one thread per process.
TINY_RUN = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "train": {"max_seq_length": 128, "threads": 1},
            "eval": {"batch_size": 8}}
TINY_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Platform:
    url: str
    app: object
    root: Path

    def client(self, key: str = "unused", timeout: float = 60):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


@contextmanager
def platform_server(served, root: Path, api_keys: tuple[str, ...] = (), port: int | None = None,
                    **platform_options) -> Iterator[Platform]:
    from tuneforge.platform.app import PlatformOptions, create_platform_app
    from tuneforge.platform.runner import RunnerSettings
    from tuneforge.serve.options import ServeOptions

    runner = RunnerSettings(poll_s=0.2, grace_s=20, registry=root / "registry.db")
    options = PlatformOptions(root=root, runner=runner, **platform_options)
    serve_options = ServeOptions(port=port or free_port(), api_keys=api_keys)
    app = create_platform_app(served, serve_options, options)
    with server_thread(app, serve_options.port, log_level="warning", timeout_graceful_shutdown=30):
        yield Platform(f"http://127.0.0.1:{serve_options.port}", app, root)


@pytest.fixture(scope="session")
def tiny_served(tiny_model):
    from tuneforge.serve.served import load_served

    return load_served(str(tiny_model))


@pytest.fixture
def training_jsonl(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(24)))
    return path


@pytest.fixture
def validation_jsonl(tmp_path) -> Path:
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(30)[24:]))
    return path


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}; events: " + " | ".join(
            e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data)
        time.sleep(0.2)
