"""End to end in headless Chromium on `tuneforge platform`'s app and the tiny random model:
upload -> create a job -> watch its curve grow -> succeeded -> chat with the ft: model -> rate the answer -> promote.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.dashboard.browser import browser, page, shots  # noqa: F401  (fixtures)
from tests.platform.conftest import TINY_RUN
from tests.serve.conftest import free_port, server_thread

pytestmark = pytest.mark.usefixtures("browser")
POLL = "?poll=250"  # the page polls every 250 ms, so a short job's curve is seen growing


@pytest.fixture
def platform_board(tmp_path, tiny_model, one_thread):
    from tuneforge.platform.app import PlatformOptions, create_platform_app
    from tuneforge.platform.runner import RunnerSettings
    from tuneforge.serve.options import ServeOptions
    from tuneforge.serve.served import load_served

    root = tmp_path / "platform"
    options = PlatformOptions(root=root, runner=RunnerSettings(poll_s=0.2, grace_s=20, registry=root / "registry.db"))
    serve_options = ServeOptions(port=free_port(), log_db=tmp_path / "requests.db", runs_dir=tmp_path / "runs",
                                 registry_db=root / "registry.db")
    served = load_served(str(tiny_model))
    app = create_platform_app(served, serve_options, options)
    with server_thread(app, serve_options.port, log_level="warning", timeout_graceful_shutdown=30):
        yield f"http://127.0.0.1:{serve_options.port}", served, app


def training_points(page) -> int:
    """How many training-loss points the job's chart draws now (0 before its first logged step)."""
    return page.evaluate("""() => {
        const path = document.querySelector("#job-chart path.series[data-name='training loss']");
        return path ? path.getAttribute("d").split(/[ML]/).filter(Boolean).length : 0; }""")


def status_of(page) -> str:
    badge = page.locator("#job-detail h2 .badge")
    return badge.inner_text() if badge.count() else ""


def test_upload_train_watch_chat_rate_promote(platform_board, page, shots, tmp_path):
    from tests.conftest import chat_records, write_jsonl

    url, served, app = platform_board
    train = write_jsonl(tmp_path / "adder-train.jsonl", chat_records(24))
    valid = write_jsonl(tmp_path / "adder-valid.jsonl", chat_records(30)[24:])
    page.goto(url + "/" + POLL + "#jobs")
    page.wait_for_selector("#job-form:not([hidden])")
    page.set_input_files("#job-train", str(train))
    page.set_input_files("#job-valid", str(valid))
    page.fill("#job-model", served.default)
    page.fill("#job-epochs", "3")
    page.fill("#job-lr", "50")
    page.fill("#job-batch", "4")
    page.fill("#job-suffix", "adder")
    page.click("#job-form summary")
    page.fill("#job-tuneforge", json.dumps(TINY_RUN))
    page.click("#job-create")
    page.wait_for_selector("#job-detail h2 .badge")
    job_id = page.locator("#job-detail h2").inner_text().split()[0]
    assert job_id.startswith("ftjob-")

    seen, shot_running, deadline = [], False, time.monotonic() + 240
    while (status := status_of(page)) not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {status}"
        if status == "running":
            seen.append(training_points(page))
            if not shot_running and seen[-1] >= 3:
                shots(page, "jobs-running")
                shot_running = True
        time.sleep(0.1)
    assert status == "succeeded", page.inner_text("#job-detail")
    growing = sorted(set(n for n in seen if n))
    assert len(growing) >= 2, f"the curve was never seen part-drawn while running: {seen}"  # it grew, live
    page.wait_for_function("document.querySelector('#job-chart path.series[data-name=\"validation loss\"]') !== null")
    assert training_points(page) >= max(growing)
    assert "Registered in the model registry as v1" in page.inner_text("#job-events")
    ft_model = f"ft:{served.default.rstrip('/').split('/')[-1]}:adder:{job_id}"
    assert ft_model in page.inner_text("#job-detail")
    page.wait_for_selector(f"#jobs-table tr[data-job='{job_id}'] .badge.succeeded")
    shots(page, "jobs")

    page.click(f"text=Chat with {ft_model}")
    page.wait_for_function(f"document.querySelector('#chat-model').value === {json.dumps(ft_model)}")
    page.fill("#chat-max", "8")
    page.fill("#chat-input", "What is 3 plus 3?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .meta .rate")
    assert ft_model in page.inner_text(".msg.assistant .meta")
    page.click(".msg.assistant .rate[data-rating='1']")
    page.wait_for_selector("text=rating saved")

    page.goto(url + "/" + POLL + "#chat")  # a fresh page also opens on the newest fine-tune
    page.wait_for_function(f"document.querySelector('#chat-model').value === {json.dumps(ft_model)}")

    page.goto(url + "/" + POLL + "#registry")
    page.click("#promote-v1-production")
    page.wait_for_selector("#registry-message.ok")
    assert "production: (none) -> v1" in page.inner_text("#registry-message")
    assert page.locator("tr[data-version='v1'] .badge", has_text="production").count() == 1

    page.goto(url + "/" + POLL + "#runs")  # the job's run directory is a run like any other
    page.wait_for_selector(f"#runs-table tr[data-run='{job_id}'] .badge")
    assert page.locator(f"#runs-table tr[data-run='{job_id}'] .badge").inner_text() == "finished"


def test_cancel_a_job_and_see_a_bad_file_fail_with_its_line(platform_board, page, tmp_path):
    from tests.conftest import chat_records, write_jsonl

    url, served, _ = platform_board
    train = write_jsonl(tmp_path / "long.jsonl", chat_records(24))
    page.goto(url + "/" + POLL + "#jobs")
    page.wait_for_selector("#job-form:not([hidden])")
    page.set_input_files("#job-train", str(train))
    page.fill("#job-model", served.default)
    page.fill("#job-epochs", "50")
    page.click("#job-create")
    page.wait_for_selector("#job-cancel")
    page.click("#job-cancel")
    page.wait_for_selector("#job-detail h2 .badge.cancelled")
    assert page.locator("#job-cancel").count() == 0  # nothing left to cancel
    assert "Job cancelled" in page.inner_text("#job-events")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + "{not json\n")
    page.set_input_files("#job-train", str(bad))
    page.fill("#job-epochs", "1")
    page.click("#job-create")
    page.wait_for_selector("#job-detail h2 .badge.failed", timeout=60_000)
    assert "bad.jsonl" in page.inner_text("#job-detail") and "25" in page.inner_text("#job-detail .worse")


def test_a_reinforcement_job_takes_its_grader_from_the_form(platform_board, page, tmp_path):
    """The grader box shows for reinforcement only; a grader that is not JSON is named before any upload; a good
    one starts a GRPO job whose method carries it."""
    from tests.conftest import write_jsonl
    from tests.platform.test_translate import GRADER

    url, served, _ = platform_board
    prompts = write_jsonl(tmp_path / "say.jsonl", [{"messages": [{"role": "user", "content": f"Say {i}."}],
                                                    "reference_answer": str(i)} for i in range(8)])
    page.goto(url + "/" + POLL + "#jobs")
    page.wait_for_selector("#job-form:not([hidden])")
    assert page.locator("#job-grader-box").is_hidden()
    page.select_option("#job-method", "reinforcement")
    assert page.locator("#job-grader-box").is_visible()
    page.set_input_files("#job-train", str(prompts))
    page.fill("#job-model", served.default)
    page.fill("#job-grader", "{type: string_check")
    page.click("#job-create")
    page.wait_for_selector("text=grader: not JSON")
    assert page.locator("#jobs-table tr[data-job]").count() == 0  # nothing was uploaded or created

    page.fill("#job-grader", json.dumps(GRADER))
    page.fill("#job-epochs", "1")
    page.click("#job-form summary")
    page.fill("#job-tuneforge", json.dumps({**TINY_RUN, "grpo": {"max_new_tokens": 4, "num_generations": 2},
                                            "train": {**TINY_RUN["train"], "max_steps": 1}}))
    page.click("#job-create")
    page.wait_for_selector("#job-detail h2 .badge")
    job_id = page.locator("#job-detail h2").inner_text().split()[0]
    job = page.evaluate(f"fetch('/v1/fine_tuning/jobs/{job_id}').then((r) => r.json())")
    assert job["method"]["type"] == "reinforcement" and job["method"]["reinforcement"]["grader"] == GRADER
    page.wait_for_selector("#job-detail h2 .badge.succeeded", timeout=120_000)
