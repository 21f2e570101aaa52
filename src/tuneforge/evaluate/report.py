"""`tuneforge compare --report DIR`: one self-contained HTML page with PNG charts of a comparison.

The folder holds index.html and the PNGs it names by relative file name, nothing else: no
JavaScript, no external stylesheet or font, so it can be zipped, mailed and opened anywhere.
File names carry no timestamps and charts are drawn in a fixed order with fixed colours, so the
same results give the same folder (and a re-run into the same folder replaces, never piles up).
Loss and perplexity get a chart of their own, one panel each: a perplexity of 30 drawn beside
an exact match of 0.4 would flatten every other bar to nothing.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from tuneforge.evaluate.compare import LOWER_IS_BETTER, most_changed
from tuneforge.evaluate.evaluator import EvalExample, ModelEval
from tuneforge.evaluate.run_metrics import read_metrics

COLOURS = ["#4472c4", "#ed7d31", "#70ad47", "#7030a0", "#ffc000", "#5b9bd5", "#c00000", "#264478"]
FIXED_CHARTS = ("metrics.png", "loss.png", "loss_curves.png", "changed.png")
STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}th{background:#f3f3f3;text-align:left}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}.better{color:#1a7f37;font-weight:bold}"
    ".worse{color:#c62828;font-weight:bold}.text{white-space:pre-wrap;max-width:30em}.score{color:#666;font-size:.9em}"
    "img{display:block;margin:1em 0;max-width:100%}.note{color:#555;font-style:italic}"
)


def number(value) -> float:
    """A metric as a float; NaN for a missing or non-numeric one, so it shows as '-' rather than failing."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fraction(value) -> bool:
    """Whether a metric value fits the shared 0..1 chart (a missing one does not stop it)."""
    value = number(value)
    return math.isnan(value) or 0.0 <= value <= 1.0


def fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def direction(metric: str, delta: float) -> str:
    """'better', 'worse' or '' for a change of `delta` in `metric` (loss and perplexity fall when better)."""
    if math.isnan(delta) or delta == 0:
        return ""
    return "better" if (delta < 0) == (metric in LOWER_IS_BETTER) else "worse"


def metric_names(evals: list[ModelEval]) -> list[str]:
    return list(dict.fromkeys(name for result in evals for name in result.metrics))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path.name


def bar_chart(path: Path, evals: list[ModelEval], names: list[str]) -> str:
    """Grouped bars in one panel, one group per metric and one bar per model, each labelled with its value."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 + len(names) * (0.5 + 0.45 * len(evals))), 4))
    width = 0.8 / len(evals)
    for index, result in enumerate(evals):
        values = [number(result.metrics.get(name)) for name in names]
        positions = [i + (index - (len(evals) - 1) / 2) * width for i in range(len(names))]
        bars = axis.bar(positions, [0.0 if math.isnan(v) else v for v in values], width,
                        label=result.name, color=COLOURS[index % len(COLOURS)])
        axis.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7, padding=2)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("value")
    axis.set_title("metrics (higher is better)")
    axis.margins(y=0.15)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def loss_chart(path: Path, evals: list[ModelEval], names: list[str]) -> str:
    """One panel per metric, each on its own scale: loss, perplexity, and any metric not in [0, 1]."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(max(6.0, 3.2 * len(names)), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        values = [number(result.metrics.get(name)) for result in evals]
        bars = axis.bar(range(len(evals)), [0.0 if math.isnan(v) else v for v in values],
                        color=[COLOURS[i % len(COLOURS)] for i in range(len(evals))])
        axis.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8, padding=2)
        axis.set_xticks(range(len(evals)), [r.name for r in evals], rotation=20, ha="right", fontsize=8)
        axis.set_title(f"{name} ({'lower' if name in LOWER_IS_BETTER else 'higher'} is better)", fontsize=10)
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)
    return save(figure, path)


def loss_curves(path: Path, evals: list[ModelEval], run_dirs: dict[str, Path]) -> str | None:
    """Training and validation loss per step of each model's run, one colour per run; None when no run
    logged any.  A run shared by several models (a fine-tune and its checkpoints) is drawn once."""
    runs: dict[Path, list[str]] = {}
    for result in evals:
        if result.name in run_dirs:
            runs.setdefault(Path(run_dirs[result.name]), []).append(result.name)
    curves = []
    for run_dir, models in runs.items():
        records = read_metrics(run_dir)
        train = [(r["step"], r["train_loss"]) for r in records if "step" in r and "train_loss" in r]
        val = [(r["step"], r["eval_loss"]) for r in records if "step" in r and "eval_loss" in r]
        if train or val:
            curves.append((", ".join(models), train, val))
    if not curves:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for index, (label, train, val) in enumerate(curves):
        colour = COLOURS[index % len(COLOURS)]
        if train:
            axis.plot(*zip(*train), color=colour, linewidth=1, label=f"{label}: train")
        if val:
            axis.plot(*zip(*val), "o--", color=colour, label=f"{label}: validation")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("loss curves")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def confusion_chart(path: Path, result: ModelEval) -> str | None:
    """The confusion matrix (rows: reference label, columns: predicted) with every count written in."""
    report = result.classification or {}
    matrix = report.get("confusion")
    if not matrix:
        return None
    labels = [str(label) for label in report.get("labels", [])]
    rows, columns = len(matrix), max(len(row) for row in matrix)
    row_labels = (labels + ["(other)"] * rows)[:rows]
    # The last column counts answers that match no label; the report names its columns when it can.
    column_labels = ([str(c) for c in report.get("columns", [])] or labels) + ["(other)"] * columns
    column_labels = column_labels[:columns]
    grid = [[number(row[j]) if j < len(row) else 0.0 for j in range(columns)] for row in matrix]
    plt = pyplot()
    size = 2.5 + 0.6 * max(rows, columns)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(grid, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    peak = max((v for row in grid for v in row), default=0.0)
    for i in range(rows):
        for j in range(columns):
            value = grid[i][j]
            axis.text(j, i, f"{value:g}", ha="center", va="center", fontsize=9,
                      color="white" if peak and value > peak / 2 else "black")
    axis.set_xticks(range(columns), column_labels, rotation=30, ha="right")
    axis.set_yticks(range(rows), row_labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("reference")
    accuracy, macro_f1 = number(report.get("accuracy")), number(report.get("macro_f1"))
    axis.set_title(f"{result.name}\naccuracy {fmt(accuracy)}, macro F1 {fmt(macro_f1)}", fontsize=10)
    return save(figure, path)


def changed_chart(path: Path, examples: list[EvalExample], evals: list[ModelEval], metric: str, indices: list[int]) -> str:
    """Horizontal bars: each shown example's change in `metric` from the first model to the last."""
    plt = pyplot()
    deltas = [number(evals[-1].scores[i].get(metric)) - number(evals[0].scores[i].get(metric)) for i in indices]
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.3 * len(indices)))
    positions = range(len(indices))
    colours = ["#1a7f37" if direction(metric, d) == "better" else "#c62828" for d in deltas]
    bars = axis.barh(positions, [0.0 if math.isnan(d) else d for d in deltas], color=colours)
    axis.bar_label(bars, labels=[f"{d:+.3g}" for d in deltas], fontsize=7, padding=2)
    axis.set_yticks(positions, [shorten(f"#{i + 1} {examples[i].source}", 40) for i in indices], fontsize=7)
    axis.invert_yaxis()
    axis.axvline(0, color="#444", linewidth=0.8)
    axis.margins(x=0.15)
    axis.set_xlabel(f"change in {metric}, {evals[0].name} -> {evals[-1].name}")
    axis.set_title(f"examples whose {metric} changed most")
    return save(figure, path)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_table(evals: list[ModelEval]) -> str:
    head = "<tr><th>metric</th>" + "".join(
        f"<th>{html.escape(r.name)}</th>" + ("<th>change</th>" if i else "") for i, r in enumerate(evals)) + "</tr>"
    rows = []
    for name in metric_names(evals):
        first = number(evals[0].metrics.get(name))
        cells = [f"<th>{html.escape(name)}</th>"]
        for index, result in enumerate(evals):
            value = number(result.metrics.get(name))
            cells.append(f'<td class="num">{fmt(value)}</td>')
            if index:
                delta = value - first
                text = "-" if math.isnan(delta) else f"{delta:+.4g}"
                cells.append(f'<td class="num {direction(name, delta)}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def examples_table(examples: list[EvalExample], evals: list[ModelEval], metric: str, indices: list[int]) -> str:
    head = "<tr><th>example</th><th>prompt (last message)</th><th>reference</th>" + "".join(
        f"<th>{html.escape(r.name)}</th>" for r in evals) + "</tr>"
    rows = []
    for i in indices:
        example = examples[i]
        prompt = example.prompt[-1].get("content", "") if example.prompt else ""
        first = number(evals[0].scores[i].get(metric))
        cells = [f"<td>#{i + 1}<br>{html.escape(example.source)}</td>",
                 f'<td class="text">{html.escape(str(prompt))}</td>',
                 f'<td class="text">{html.escape(example.reference)}</td>']
        for index, result in enumerate(evals):
            score = number(result.scores[i].get(metric))
            mark = direction(metric, score - first) if index else ""
            cells.append(f'<td class="text">{html.escape(result.outputs[i])}'
                         f'<div class="{"score " + mark if mark else "score"}">{html.escape(metric)} {fmt(score)}</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def image(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def write_report(directory: Path, examples: list[EvalExample], evals: list[ModelEval], run_dirs: dict[str, Path],
                 metric: str, top: int = 20) -> Path:
    """index.html and its PNGs in `directory`: the models, the summary with changes vs the first model,
    metric bars, loss curves of the runs, confusion matrices, and the `top` examples whose `metric` moved most."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*(directory / name for name in FIXED_CHARTS), *directory.glob("confusion_*.png")]:
        stale.unlink(missing_ok=True)  # a chart this run does not draw must not linger beside the page
    names = metric_names(evals)
    shown = [n for n in names if any(not math.isnan(number(r.metrics.get(n))) for r in evals)]
    own_scale = [n for n in shown if n in LOWER_IS_BETTER or not all(fraction(r.metrics.get(n)) for r in evals)]
    shared = [n for n in shown if n not in own_scale]
    baseline = html.escape(evals[0].name)
    body = [f"<h1>tuneforge comparison</h1><h2>Models</h2><ol>"
            + "".join(f"<li>{html.escape(r.name)}{' (baseline)' if not i else ''}</li>" for i, r in enumerate(evals))
            + f"</ol><p>Every model answered the same {len(examples)} examples with the same decoding.</p>",
            f"<h2>Summary</h2><p>Change is against {baseline}; green is better, red is worse "
            f"(loss and perplexity are better lower).</p>" + summary_table(evals), "<h2>Charts</h2>"]
    if shared:
        body.append(image(bar_chart(directory / "metrics.png", evals, shared), "metric bars"))
    if own_scale:
        body.append(image(loss_chart(directory / "loss.png", evals, own_scale), "loss and perplexity"))
    body.append("<h3>Loss curves</h3>")
    curves = loss_curves(directory / "loss_curves.png", evals, run_dirs) if run_dirs else None
    if curves:
        body.append(image(curves, "training and validation loss per step"))
    elif not run_dirs:
        body.append('<p class="note">No loss curves: no model was given as a run directory, '
                    "so there is no training log (metrics.jsonl) to draw.</p>")
    else:
        body.append('<p class="note">No loss curves: no compared model\'s run directory holds a training '
                    "or validation loss in its metrics.jsonl.</p>")
    for index, result in enumerate(evals):
        if result.classification:
            chart = confusion_chart(directory / f"confusion_{index}.png", result)
            if chart:
                body.append(f"<h3>Confusion matrix: {html.escape(result.name)}</h3>"
                            + image(chart, f"confusion matrix of {result.name}"))
    indices = most_changed(evals, metric, top) if len(evals) > 1 else []
    body.append(f"<h2>Examples whose {html.escape(metric)} changed most</h2>")
    if indices:
        body.append(image(changed_chart(directory / "changed.png", examples, evals, metric, indices),
                          f"change in {metric} per example"))
        body.append(examples_table(examples, evals, metric, indices))
    else:
        body.append(f'<p class="note">No example\'s {html.escape(metric)} changed between {baseline} '
                    f"and {html.escape(evals[-1].name)}.</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>tuneforge comparison</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>")
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
