"""The comparison's HTML report, from hand-built results: its charts, numbers, escaping and omissions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneforge.evaluate.evaluator import EvalExample, ModelEval
from tuneforge.evaluate.metrics import classification_report
from tuneforge.evaluate.report import write_report

EXAMPLES = [
    EvalExample("data.jsonl:1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "Paris"),
    EvalExample("data.jsonl:2", [{"role": "user", "content": "Say hi & bye"}], "hi & bye"),
    EvalExample("data.jsonl:3", [{"role": "user", "content": "What is 2+2?"}], "4"),
]


def models(classification: dict | None = None) -> list[ModelEval]:
    base = ModelEval(
        "base",
        {"exact_match": 0.25, "token_f1": 0.8, "loss": 2.5, "perplexity": 12.18},
        ["I think <b>Lyon</b>", "hello", "unchanged answer"],
        [{"exact_match": 0.0}, {"exact_match": 0.0}, {"exact_match": 1.0}],
    )
    tuned = ModelEval(
        "runs/tuned",
        {"exact_match": 0.75, "token_f1": 0.6, "loss": 1.25, "perplexity": 3.49},
        ["Paris", "hi & bye", "unchanged answer"],
        [{"exact_match": 1.0}, {"exact_match": 1.0}, {"exact_match": 1.0}],
        classification,
    )
    return [base, tuned]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "tuned"
    run.mkdir(parents=True)
    lines = [{"step": s, "train_loss": 3.0 - 0.2 * s} for s in range(1, 9)] + [{"step": 4, "eval_loss": 2.4}, {"step": 8, "eval_loss": 1.9}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), path
    assert len(data) > 1024, path


def test_the_page_references_every_chart_and_every_chart_is_a_png(tmp_path, run_dir):
    index = write_report(tmp_path / "report", EXAMPLES, models(), {"runs/tuned": run_dir}, "exact_match")
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    shown = images(page)
    assert set(shown) == {"metrics.png", "loss.png", "loss_curves.png", "changed.png"}
    for name in shown:
        assert "/" not in name  # relative, beside the page, so the folder can be moved
        assert_png(index.parent / name)
    assert {p.name for p in index.parent.glob("*.png")} == set(shown)  # nothing drawn that the page leaves out


def test_the_page_is_self_contained(tmp_path, run_dir):
    page = write_report(tmp_path, EXAMPLES, models(), {"runs/tuned": run_dir}, "exact_match").read_text()
    assert "<script" not in page.lower()
    assert "http" not in page.lower()
    assert '<link' not in page.lower()
    assert "<style>" in page


def test_the_summary_shows_each_value_and_its_change_coloured_by_direction(tmp_path):
    page = write_report(tmp_path, EXAMPLES, models(), {}, "exact_match").read_text()
    assert "<li>base (baseline)</li>" in page and "<li>runs/tuned</li>" in page
    row = re.search(r"<tr><th>exact_match</th>(.*?)</tr>", page).group(1)
    assert '<td class="num">0.25</td><td class="num">0.75</td><td class="num better">+0.5</td>' == row
    assert re.search(r'<th>token_f1</th>.*?<td class="num worse">-0.2</td>', page)
    assert re.search(r'<th>loss</th><td class="num">2.5</td><td class="num">1.25</td><td class="num better">-1.25</td>', page)
    assert re.search(r'<th>perplexity</th>.*?<td class="num better">-8.69</td>', page)


def test_the_examples_that_changed_are_shown_escaped_and_the_unchanged_one_is_not(tmp_path):
    page = write_report(tmp_path, EXAMPLES, models(), {}, "exact_match").read_text()
    assert "I think &lt;b&gt;Lyon&lt;/b&gt;" in page
    assert "<b>Lyon" not in page
    assert "Say hi &amp; bye" in page and "hi &amp; bye" in page
    assert "Capital of France?" in page  # the prompt's last message
    assert "Be brief." not in page  # not the ones before it
    assert "unchanged answer" not in page
    assert page.index("data.jsonl:1") < page.index("data.jsonl:2")
    assert "exact_match 0</div>" in page and "exact_match 1</div>" in page


def test_top_limits_the_examples_shown(tmp_path):
    page = write_report(tmp_path, EXAMPLES, models(), {}, "exact_match", top=1).read_text()
    assert "Capital of France?" in page
    assert "Say hi" not in page


def test_a_metric_on_another_scale_gets_its_own_panel_not_the_shared_bars(tmp_path):
    base, tuned = models()
    base.metrics, tuned.metrics = {"exact_match": 0.25, "tokens": 0.9}, {"exact_match": 0.75, "tokens": 80.0}
    page = write_report(tmp_path, EXAMPLES, [base, tuned], {}, "exact_match").read_text()
    assert {"metrics.png", "loss.png"} <= set(images(page))
    base.metrics = {"exact_match": 0.25}
    tuned.metrics = {"exact_match": 0.75}
    page = write_report(tmp_path, EXAMPLES, [base, tuned], {}, "exact_match").read_text()
    assert "metrics.png" in images(page)
    assert "loss.png" not in page and not (tmp_path / "loss.png").exists()


def test_no_changed_example_is_said_and_no_chart_drawn(tmp_path):
    base, tuned = models()
    tuned.scores = base.scores
    page = write_report(tmp_path, EXAMPLES, [base, tuned], {}, "exact_match").read_text()
    assert "No example's exact_match changed between base and runs/tuned" in page
    assert not (tmp_path / "changed.png").exists()


def test_loss_curves_are_omitted_with_a_reason_when_no_run_directory_is_given(tmp_path):
    page = write_report(tmp_path, EXAMPLES, models(), {}, "exact_match").read_text()
    assert "loss_curves.png" not in page
    assert not (tmp_path / "loss_curves.png").exists()
    assert "No loss curves: no model was given as a run directory" in page


def test_loss_curves_are_omitted_when_the_run_logged_no_loss(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "learning_rate": 0.001}\n')
    page = write_report(tmp_path / "report", EXAMPLES, models(), {"runs/tuned": run}, "exact_match").read_text()
    assert "loss_curves.png" not in page
    assert "holds a training or validation loss" in page


def test_a_rerun_without_runs_removes_the_old_curve(tmp_path, run_dir):
    out = tmp_path / "report"
    write_report(out, EXAMPLES, models(), {"runs/tuned": run_dir}, "exact_match")
    assert (out / "loss_curves.png").exists()
    write_report(out, EXAMPLES, models(), {}, "exact_match")
    assert not (out / "loss_curves.png").exists()


def test_a_classification_report_gets_a_confusion_chart(tmp_path):
    predictions = ["positive", "negative", "Positive.", "maybe"]
    classification = classification_report(predictions, ["positive", "negative", "negative", "positive"]).as_dict()
    page = write_report(tmp_path, EXAMPLES, models(classification), {}, "exact_match").read_text()
    assert "confusion_1.png" in images(page)
    assert "confusion_0.png" not in page  # the base model has no classification report
    assert "Confusion matrix: runs/tuned" in page
    assert_png(tmp_path / "confusion_1.png")


def test_no_confusion_chart_without_a_classification_report(tmp_path):
    write_report(tmp_path, EXAMPLES, models(), {}, "exact_match")
    assert not list(tmp_path.glob("confusion_*.png"))


def test_the_same_results_give_the_same_folder(tmp_path, run_dir):
    first, second = tmp_path / "a", tmp_path / "b"
    write_report(first, EXAMPLES, models(), {"runs/tuned": run_dir}, "exact_match")
    write_report(second, EXAMPLES, models(), {"runs/tuned": run_dir}, "exact_match")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
