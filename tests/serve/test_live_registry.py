"""`tuneforge serve registry:production`: the alias's version served under the alias, swapped on promote and rollback.

Two different tiny random models are registered as v1 (a model directory) and v2 (a run directory
holding a full fine-tune's `final/`); the server follows the alias with a short poll interval.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.serve.conftest import Live, free_port, gated, server_thread, wait_until
from tuneforge.cli import main
from tuneforge.models.generate import render_prompt
from tuneforge.models.load import ModelInfo, load_for_inference
from tuneforge.registry.store import add_version, open_registry, rollback, set_alias

QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]
POLL_S = 0.05


@pytest.fixture(scope="module")
def model_dirs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """v1: the tiny model's directory. v2: a run directory whose final/ holds the same architecture, other weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("run-v2")
    final = run / "final"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.02)
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(final)
    ModelInfo(base_model=str(tiny_model), method="full").write(final)
    return {"v1": tiny_model, "v2": run}


@pytest.fixture(scope="module")
def greedy(model_dirs):
    """Each version's own greedy reply, straight from `generate` on a separately loaded copy."""
    cache: dict[tuple, str] = {}

    def reply(version: str, max_tokens: int) -> str:
        key = (version, max_tokens)
        if key not in cache:
            model, tokenizer = load_for_inference(str(model_dirs[version]))
            prompt = tokenizer.encode(render_prompt(tokenizer, QUESTION), add_special_tokens=False)
            with torch.inference_mode():
                output = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
            cache[key] = tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)
        return cache[key]

    return reply


@pytest.fixture
def registry(tmp_path, model_dirs):
    """A registry with v1 and v2, production -> v1."""
    path = tmp_path / "registry.db"
    conn = open_registry(path)
    for version in ("v1", "v2"):
        add_version(conn, model_dirs[version], base_model="tiny-llama", method="full")
    set_alias(conn, "production", "v1")
    yield path, conn
    conn.close()


@contextmanager
def serving(path: Path, reference: str = "registry:production", **options):
    """`tuneforge serve registry:...` in-process: the startup path of the command, then the app on a loopback port."""
    from tuneforge.serve.app import create_app
    from tuneforge.serve.live import load_target, target_from
    from tuneforge.serve.options import ServeOptions

    target = target_from(reference, path, None, POLL_S)
    options = ServeOptions(port=free_port(), **options)
    app = create_app(load_target(target), options, target)  # no reference to the first model is kept here
    with server_thread(app, options.port, log_level="info", timeout_graceful_shutdown=10) as (server, thread):
        yield Live(f"http://127.0.0.1:{options.port}", server, thread, app.state.server)


def ask(live: Live, max_tokens: int = 12) -> tuple[str, str, str]:
    """(content, system_fingerprint, X-Model-Version header) of a greedy answer for model "production"."""
    raw = live.client().chat.completions.with_raw_response.create(
        model="production", messages=QUESTION, max_tokens=max_tokens, temperature=0)
    response = raw.parse()
    assert response.model == "production"
    return response.choices[0].message.content, response.system_fingerprint, raw.headers.get("x-model-version")


def serving_version(live: Live) -> str:
    return live.get("/health").json()["version"]


def decode_steps(live: Live) -> float:
    return float(re.search(r"^tuneforge_decode_steps_total (\S+)$", live.get("/metrics").text, re.M).group(1))


def test_promote_swaps_versions_while_the_request_in_flight_finishes_on_the_old_one(registry, greedy):
    path, conn = registry
    assert greedy("v1", 40) != greedy("v2", 40) and greedy("v1", 12) != greedy("v2", 12)
    with serving(path) as live:
        assert ask(live) == (greedy("v1", 12), "v1", "v1")
        [card] = live.client().models.list().data
        assert (card.id, card.version) == ("production", "v1")
        assert live.get("/health").json()["models"] == ["production"]
        steps_before = decode_steps(live)

        old_engine = live.engine
        old_model = weakref.ref(live.state.served.model)
        with gated(old_engine) as gate:  # v1's forward passes wait: its request stays in flight across the swap
            stream = live.client().chat.completions.create(model="production", messages=QUESTION, max_tokens=40,
                                                           temperature=0, stream=True)
            set_alias(conn, "production", "v2")
            wait_until(lambda: serving_version(live) == "v2", timeout=30)
            assert ask(live) == (greedy("v2", 12), "v2", "v2")  # served by v2 while v1 still holds its request
            [card] = live.client().models.list().data
            assert (card.id, card.version) == ("production", "v2")
            gate.set()
            chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == greedy("v1", 40)
        assert {c.system_fingerprint for c in chunks} == {"v1"}
        assert old_engine is not live.engine
        wait_until(lambda: not old_engine._thread.is_alive(), timeout=30)  # drained, then shut down
        del old_engine
        wait_until(lambda: gc.collect() >= 0 and old_model() is None, timeout=30)  # v1's weights were freed
        assert decode_steps(live) >= steps_before  # counters carry over the swap

        previous, restored = rollback(conn, "production")
        assert (previous, restored) == ("v2", "v1")
        wait_until(lambda: serving_version(live) == "v1", timeout=30)
        assert ask(live) == (greedy("v1", 12), "v1", "v1")
        completion = live.client().completions.create(model="production", prompt="Hello", max_tokens=4, temperature=0)
        assert completion.system_fingerprint == "v1"
    assert not live.state.engine._thread.is_alive()  # shutdown drained the engine and stopped the watcher
    assert not any(t.name == "tuneforge-registry-watcher" for t in threading.enumerate())


def test_a_version_that_cannot_load_is_logged_and_the_old_one_keeps_serving(registry, greedy, model_dirs, tmp_path,
                                                                          caplog):
    path, conn = registry
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    add_version(conn, broken, base_model="tiny-llama", method="full")  # v3
    gone = tmp_path / "gone"
    gone.mkdir()
    add_version(conn, gone, base_model="tiny-llama", method="full")  # v4
    gone.rmdir()

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "cannot be served" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="tuneforge.serve"), serving(path) as live:
        set_alias(conn, "production", "v3")
        wait_until(lambda: failures(), timeout=30)
        time.sleep(10 * POLL_S)
        [message] = failures()  # not retried while the alias stays on it
        assert "v3" in message and str(broken) in message and "still serving v1" in message
        assert serving_version(live) == "v1" and ask(live) == (greedy("v1", 12), "v1", "v1")

        set_alias(conn, "production", "v4")
        wait_until(lambda: len(failures()) == 2, timeout=30)
        assert "no such file or directory" in failures()[1] and str(gone) in failures()[1]

        set_alias(conn, "production", "v1")  # back on the version being served: nothing to load
        time.sleep(10 * POLL_S)
        set_alias(conn, "production", "v3")  # the alias moved, so v3 is tried again
        wait_until(lambda: len(failures()) == 3, timeout=30)
        assert serving_version(live) == "v1" and ask(live)[0] == greedy("v1", 12)

        set_alias(conn, "production", "v2")  # a good version after bad ones still swaps in
        wait_until(lambda: serving_version(live) == "v2", timeout=30)
        assert ask(live) == (greedy("v2", 12), "v2", "v2")


def test_a_version_id_is_served_as_is_and_not_followed(registry, greedy):
    path, conn = registry
    with serving(path, "registry:v2") as live:
        assert live.get("/health").json()["models"] == ["v2"]
        set_alias(conn, "production", "v2")
        time.sleep(5 * POLL_S)
        raw = live.client().chat.completions.with_raw_response.create(model="v2", messages=QUESTION, max_tokens=12,
                                                                      temperature=0)
        assert raw.parse().choices[0].message.content == greedy("v2", 12) and raw.headers["x-model-version"] == "v2"
        assert not any(t.name == "tuneforge-registry-watcher" for t in threading.enumerate())


def test_cli_unknown_alias_or_missing_registry_is_a_clear_error(registry, tmp_path, capsys, monkeypatch):
    path, conn = registry
    monkeypatch.chdir(tmp_path)

    def said() -> str:  # what the command printed, without the terminal's line wrapping
        return " ".join(capsys.readouterr().err.split())

    assert main(["serve", "registry:canary", "--registry", str(path)]) == 2
    err = said()
    assert "registry:canary" in err and "production -> v1" in err and "v1, v2" in err
    set_alias(conn, "staging", "v2")
    conn.execute("DELETE FROM aliases WHERE name = 'production'")
    conn.commit()
    assert main(["serve", "registry:production", "--registry", str(path)]) == 2
    err = said()
    assert "'production'" in err and "staging -> v2" in err and "--to production" in err
    assert main(["serve", "registry:production", "--registry", str(tmp_path / "nowhere.db")]) == 2
    assert "no model registry" in said()
    assert not (tmp_path / "nowhere.db").exists()
    assert main(["serve", "registry:staging", "--registry", str(path), "--adapter", f"a={tmp_path}"]) == 2
    assert "--adapter" in said()
    assert main(["serve", "registry:staging", "--registry", str(path), "--registry-poll", "0"]) == 2
    assert "--registry-poll" in said()


@pytest.fixture
def serve_log():
    """The `tuneforge.serve` logger, put back as it was after `tuneforge serve` gave it a terminal handler."""
    log = logging.getLogger("tuneforge.serve")
    handlers, level = list(log.handlers), log.level
    yield log
    log.handlers[:] = handlers
    log.setLevel(level)


def test_cli_serves_the_alias_under_its_name_or_the_given_one(registry, monkeypatch, serve_log):
    import uvicorn

    path, _ = registry
    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: apps.append(server.config.app))
    monkeypatch.setenv("TUNEFORGE_REGISTRY", str(path))
    monkeypatch.chdir(path.parent)  # where the command's default request log would go
    assert main(["serve", "registry:production"]) == 0
    assert serve_log.handlers and serve_log.level == logging.INFO  # swaps show in the terminal
    assert main(["serve", "registry:production", "--served-model-name", "assistant"]) == 0
    first, second = (app.state.server.served for app in apps)
    assert (list(first.names), first.version, list(second.names), second.version) == (
        ["production"], "v1", ["assistant"], "v1")
