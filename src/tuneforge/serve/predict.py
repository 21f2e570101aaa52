"""`tuneforge predict MODEL FILE`: a trained classifier's label(s) and class probabilities for every text of a file.

FILE is read by the data readers (JSONL, JSON, CSV/TSV, Parquet; a `text` field, or another named
with --text-key), or is a .txt file with one text a line.  When every record also has a label,
the predictions are scored (accuracy, macro-F1) with the same report as training's.  An image
classifier (task: image_classify) takes images, folders and lists of images instead (predict_images.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from tuneforge.errors import ConfigError, DataError
from tuneforge.files import write_atomic


def add_parsers(commands) -> None:
    """`predict`, run by run_predict."""
    predict = commands.add_parser(
        "predict", help="label texts or images with a classifier (task: classify, image_classify)",
        description="Label every text of FILE with a classifier trained with task: classify (a run directory, its "
        "final/ or a checkpoint). Writes one JSON line per text: its source (file:line), the label (or, multi-label, "
        "the labels at the threshold) and every class's probability. When the records carry labels too, prints "
        "accuracy and macro-F1. An image classifier (task: image_classify) labels image files, every image of a "
        "folder (scored when the folder holds label folders), or the images a .txt file lists, one path a line.")
    predict.set_defaults(func=run_predict)
    predict.add_argument("model", metavar="MODEL_OR_RUN")
    predict.add_argument("file", type=Path, metavar="FILE",
                         help="JSONL, JSON, CSV/TSV or Parquet records with a 'text' field; or .txt, one text a line; "
                         "for an image classifier: an image, a folder of images, or a .txt list of image paths")
    predict.add_argument("more", nargs="*", type=Path, metavar="MORE", help="image classifiers: more images or folders")
    predict.add_argument("--out", type=Path, metavar="FILE", help="write the JSONL here (default: standard output)")
    predict.add_argument("--text-key", default="text", metavar="KEY", help="the field holding the text (default: text)")
    predict.add_argument("--batch-size", type=int, default=32, metavar="N")
    predict.add_argument("--threshold", type=float, metavar="P", help="multi-label: override the saved threshold")


def read_texts(path: Path, text_key: str = "text") -> tuple[list[str], list, list[str]]:
    """(texts, labels or None each, sources) of a file; DataError naming every bad record."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        kept = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
        if not kept:
            raise DataError(f"{path}: no texts")
        return [text for _, text in kept], [None] * len(kept), [f"{path}:{number}" for number, _ in kept]
    from tuneforge.data.formats import Mapping, read_records

    records = read_records(path, "auto", Mapping(columns={"text": text_key} if text_key != "text" else {}))
    wrong = [r for r in records if r.kind not in ("text", "classification")]
    if wrong:
        raise DataError(f"{wrong[0].source}: a {wrong[0].kind} record; predict needs a '{text_key}' field "
                        f"({len(wrong)} such record(s))")
    return ([r.text for r in records], [r.label if r.kind == "classification" else None for r in records],
            [r.source for r in records])


def emit(rows: list[dict], out: Path | None, console: Console) -> None:
    """One JSON line a prediction, to `out` (written beside and renamed) or standard output."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    if out:
        write_atomic(out, "".join(lines))
    else:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    console.print(f"{len(rows)} prediction(s)" + (f" -> {out}" if out else ""))


def run_predict(args, console: Console) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    from tuneforge.serve.predict_images import is_image_classifier, run_image_predict

    if is_image_classifier(args.model):
        return run_image_predict(args, console)
    if args.more:
        raise ConfigError("a text classifier labels one FILE of texts; give one")
    texts, references, sources = read_texts(args.file, args.text_key)  # before the model: bad input fails fast
    from tuneforge.models.classifier import load_classifier

    classifier = load_classifier(args.model)
    predictions = classifier.classify(texts, args.batch_size, args.threshold)
    emit([{"source": source, "text": text, **prediction.as_dict()}
          for source, text, prediction in zip(sources, texts, predictions)], args.out, console)
    if all(reference is not None for reference in references):
        from tuneforge.evaluate.classification import score

        try:
            for reference, source in zip(references, sources):
                classifier.labels.check(reference, source)
        except DataError as exc:
            console.print(f"not scored against the file's labels: {exc}", highlight=False)
            return 0
        report = score([p.label for p in predictions], references, classifier.labels)
        console.print(f"against the file's labels: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    return 0
