"""A classifier's scores on labelled examples: the evaluation module's report, the base-vs-tuned table, the files.

Single-label scores are evaluate.metrics.classification_report's (accuracy, macro and per-class
precision/recall/F1, confusion matrix), so a classifier and a generative model answering with
labels are scored alike (less the confusion matrix's column of answers that are no label, which a
classification head cannot give).  Class names go in as placeholders and come back renamed, because that
report compares answers after normalisation and two class names may normalise alike ("A" and "a").
Multi-label scores are per class that same report's binary figures, plus subset accuracy (every
class right) and micro F1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.models.labels import Label, LabelSet, as_names
from tuneforge.evaluate.metrics import classification_report


def placeholder(index: int) -> str:
    return f"class{index}"


def score(predicted: list[Label], references: list[Label], labels: LabelSet) -> dict:
    """The report of predictions against references (both as class names or tuples of them)."""
    if labels.multi_label:
        return multi_label_report(predicted, references, labels.names)
    code = {name: placeholder(i) for i, name in enumerate(labels.names)}
    name_of = {placeholder(i): name for i, name in enumerate(labels.names)}
    report = classification_report([code[p] for p in predicted], [code[r] for r in references],
                                   [code[n] for n in labels.names]).as_dict()
    report["labels"] = report["columns"] = list(labels.names)
    report["per_class"] = {name_of[key]: value for key, value in report["per_class"].items()}
    # A head always answers with a class, so the report's column of answers outside the labels is empty.
    report["confusion"] = [row[:-1] for row in report["confusion"]]
    return report


def multi_label_report(predicted: list[Label], references: list[Label], names: tuple[str, ...]) -> dict:
    """Per class: precision, recall, F1 and support as a binary task; macro over classes that occur; micro over all."""
    per_class, totals = {}, {"tp": 0, "fp": 0, "fn": 0}
    for name in names:
        truth = ["yes" if name in as_names(r) else "no" for r in references]
        guess = ["yes" if name in as_names(p) else "no" for p in predicted]
        per_class[name] = classification_report(guess, truth, ["no", "yes"]).per_class["yes"]
        totals["tp"] += sum(t == g == "yes" for t, g in zip(truth, guess))
        totals["fp"] += sum(t == "no" and g == "yes" for t, g in zip(truth, guess))
        totals["fn"] += sum(t == "yes" and g == "no" for t, g in zip(truth, guess))
    present = [per_class[n] for n in names if per_class[n]["support"]] or list(per_class.values())
    denominator = 2 * totals["tp"] + totals["fp"] + totals["fn"]
    return {
        "accuracy": sum(set(as_names(p)) == set(as_names(r)) for p, r in zip(predicted, references)) / len(references),
        "macro_precision": math.fsum(c["precision"] for c in present) / len(present),
        "macro_recall": math.fsum(c["recall"] for c in present) / len(present),
        "macro_f1": math.fsum(c["f1"] for c in present) / len(present),
        "micro_f1": 2 * totals["tp"] / denominator if denominator else 1.0,
        "per_class": per_class,
        "labels": list(names),
        "multi_label": True,
    }


def print_table(console: Console, split: str, count: int, base: dict, tuned: dict) -> None:
    """Base (untrained head) vs fine-tuned on the held-out split: accuracy, macro-F1, (micro-F1), loss."""
    table = Table(title=f"Base model (untrained head) vs fine-tuned, {split} split ({count} records)")
    for column in ("", "base (untrained head)", "fine-tuned", "change"):
        table.add_column(column, justify="right" if column else "left")
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1")]
    if "micro_f1" in tuned:
        rows.append(("micro-F1", "micro_f1"))
    for title, key in rows:
        right = f" ({round(tuned[key] * count)}/{count})" if key == "accuracy" else ""
        left = f" ({round(base[key] * count)}/{count})" if key == "accuracy" else ""
        table.add_row(title, f"{base[key]:.3f}{left}", f"{tuned[key]:.3f}{right}", f"{tuned[key] - base[key]:+.3f}")
    table.add_row("loss", f"{base['loss']:.4f}", f"{tuned['loss']:.4f}", f"{tuned['loss'] - base['loss']:+.4f}")
    console.print(table)


def print_confusion(console: Console, report: dict, title: str) -> None:
    """A single-label report's confusion matrix as a table: a row per true class, a column per predicted one."""
    names = report["labels"]
    table = Table(title=title)
    table.add_column("true \\ predicted")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, report["confusion"]):
        table.add_row(name, *(f"[bold]{n}[/]" if i == j and n else str(n)
                              for j, n in enumerate(row) for i in [names.index(name)]))
    console.print(table)


def write_evaluation(directory: Path, split: str, base: dict | None, tuned: dict, rows: list[dict]) -> list[Path]:
    """classification.json (both reports), predictions.jsonl (the tuned model's, per record) and, for
    single-label classifiers, confusion_base.png and confusion_tuned.png; returns the files written."""
    from tuneforge.evaluate.evaluator import ModelEval
    from tuneforge.evaluate.report import confusion_chart

    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "classification.json", directory / "predictions.jsonl"]
    summary = {"split": split, "records": len(rows), "base": base, "tuned": tuned}
    written[0].write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    written[1].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    if not tuned.get("multi_label"):
        for name, report in (("base", base), ("tuned", tuned)) if base else (("tuned", tuned),):
            title = "base model (untrained head)" if name == "base" else "fine-tuned"
            chart = confusion_chart(directory / f"confusion_{name}.png", ModelEval(title, classification=report))
            if chart:
                written.append(directory / chart)
    return written
