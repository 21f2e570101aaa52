"""The dashboard as a person uses it, in headless Chromium: runs, compare, registry, monitoring, data, chat."""

from __future__ import annotations

import json
import re

import pytest

from tests.dashboard.browser import browser, page, shots  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("browser")


def test_runs_tab_shows_curves_tables_and_comparison(board, page, shots):
    page.goto(board.url + "/#runs")
    page.wait_for_selector("#runs-table tr[data-run='alpha']")
    assert page.locator("#runs-table tr[data-run]").count() == 2
    assert page.locator("#runs-table tr[data-run='alpha'] .badge").inner_text() == "finished"
    page.click("#runs-table tr[data-run='alpha'] td:nth-child(2)")
    page.wait_for_selector("#run-detail svg.chart path.series[data-name='training loss']")
    assert page.locator("#run-detail svg.chart circle").count() >= 2  # validation loss before and after
    row = page.locator("#run-detail table.figures tr").nth(1)
    assert row.locator("td").first.inner_text() == "validation loss"
    assert "better" in row.locator("td").nth(3).get_attribute("class")
    shots(page, "runs")
    for name in ("alpha", "beta"):
        page.check(f"#runs-table tr[data-run='{name}'] input[type=checkbox]")
    page.click("#runs-compare")
    page.wait_for_selector("#run-compare svg.chart")
    assert page.locator("#run-compare svg.chart path.series").count() == 4  # training and validation, each run
    assert "train.learning_rate" in page.locator("#run-compare").inner_text()
    shots(page, "compare")


def test_registry_tab_promotes_shows_refusal_and_rolls_back(board, page, shots):
    assert board.post("/dashboard/api/registry/register", {"run": "alpha"}).status_code == 200
    assert board.post("/dashboard/api/registry/register", {"run": "beta", "parent": "v1"}).status_code == 200
    page.goto(board.url + "/#registry")
    page.click("#promote-v1-production")
    page.wait_for_selector("#registry-message.ok")
    assert "production: (none) -> v1" in page.inner_text("#registry-message")
    page.click("#promote-v2-production")
    page.wait_for_selector("#registry-message.refused")
    assert "gates failed" in page.inner_text("#registry-message")  # the gate outcome, as the CLI words it
    assert "exact_match 0.1 < 0.9" in page.inner_text("#registry-message")
    assert page.locator("#lineage .chain").count() == 1  # v1 -> v2 is one chain from the base model
    shots(page, "registry")
    page.click("#promote-force")
    page.wait_for_selector("text=forced past failed gates")
    page.click("#rollback-production")
    page.wait_for_selector("text=production: v2 -> v1 (rolled back)")
    assert page.locator("tr[data-version='v1'] .badge", has_text="production").count() == 1


def test_chat_preselects_the_fine_tune_and_feedback_lands_in_the_request_log(board, page, shots):
    page.goto(board.url + "/#chat")
    page.wait_for_function("document.querySelector('#chat-model').value !== ''")
    assert page.input_value("#chat-model") == "alpha"  # the fine-tune, not the base model
    page.fill("#chat-max", "6")
    page.fill("#chat-input", "What is 2 plus 2?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .meta .rate")
    page.click(".msg.assistant .rate[data-rating='1']")
    page.wait_for_selector("text=rating saved")
    page.fill("#chat-input", "And 3 plus 3?")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .meta .rate').length >= 6")
    second = page.locator(".msg.assistant").nth(1)
    second.locator("text=✎ correct").click()
    second.locator(".correction textarea").fill("3 plus 3 is 6.")
    second.locator("text=Save correction").click()
    second.locator("text=correction saved").wait_for()
    shots(page, "chat")
    from tuneforge.monitor.store import connect, read_feedback

    conn = connect(board.state.request_log.settings.path, readonly=True)
    try:
        feedback = read_feedback(conn)
    finally:
        conn.close()
    latest = sorted((items[-1] for items in feedback.values()), key=lambda f: f.created)
    assert [(f.rating, f.correction) for f in latest] == [(1, None), (-1, "3 plus 3 is 6.")]


def test_monitoring_tab_charts_the_request_log_and_checks_drift(board, page, shots):
    client = board.client()
    for i in range(2):
        client.chat.completions.create(model="alpha", max_tokens=3, messages=[{"role": "user", "content": f"hi {i}"}])
    page.goto(board.url + "/#monitoring")
    page.wait_for_selector("#monitor-charts svg.chart rect.bar")
    assert page.locator("#monitor-cards .figure").count() == 8
    assert "latency p50" in page.inner_text("#monitor-table")
    page.select_option("#drift-run", "alpha")
    page.click("#drift-check")
    page.wait_for_selector("#drift-result svg.gauge")
    assert page.locator("#drift-result tr").count() == 3  # header, length, vocabulary
    shots(page, "monitoring")


def test_data_tab_inspects_an_uploaded_file(board, page, shots, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    lines = [json.dumps(good | {"messages": [good["messages"][0], {"role": "assistant", "content": "x " * i}]})
             for i in range(1, 30)] + ['{"messages": [{"role": "user"}]}']
    upload = tmp_path / "support.jsonl"
    upload.write_text("\n".join(lines) + "\n")
    page.goto(board.url + "/#data")
    page.set_input_files("#inspect-file", str(upload))
    page.click("#inspect-form button[type=submit]")
    page.wait_for_selector("#inspect-result .cards, #inspect-result .worse")
    assert page.locator("#inspect-problems").count() == 1, page.inner_text("#inspect-result")
    assert re.search(r"support\.jsonl:30", page.inner_text("#inspect-problems"))
    assert page.locator("#inspect-result svg.chart rect.bar").count() >= 3
    shots(page, "data")
