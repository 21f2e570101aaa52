"""`tuneforge predict RUN IMAGE_OR_FOLDER ...` for an image classifier: each image's label(s) and class probabilities.

Inputs are image files, folders (every image under them, sorted) and .txt files listing image paths
(one a line, relative to the .txt).  Every image is opened and decoded before the model loads, so a
bad one fails in a second, named by path (data/images.py's checks).  A folder that holds label
folders (`DIR/LABEL/*.png`, the training layout) is scored against those labels with the training
report's accuracy and macro-F1.  Pinned by tests/images/test_predict.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from tuneforge.errors import DataError
from tuneforge.paths import MODEL_INFO, saved_model_dir

TASK = "image_classify"  # models/image_classifier.py's; read here without importing torch


def is_image_classifier(reference: str) -> bool:
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    try:
        return saved is not None and json.loads((saved / MODEL_INFO).read_text()).get("task") == TASK
    except (OSError, json.JSONDecodeError):
        return False


def image_inputs(inputs: list[Path]) -> tuple[list[Path], list[str | None]]:
    """(image paths, the label folder each sits in under a folder input, else None)."""
    from tuneforge.data.readers import IMAGE_SUFFIXES

    paths, references = [], []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                               and not p.name.startswith(".")):
                parts = path.relative_to(item).parts
                paths.append(path)
                references.append(parts[0] if len(parts) > 1 else None)
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [line.strip() for line in item.read_text(encoding="utf-8").splitlines() if line.strip()]
            paths += [(item.parent / line).resolve() for line in lines]
            references += [None] * len(lines)
        else:
            paths.append(item)
            references.append(None)
    if not paths:
        raise DataError(f"no images in {', '.join(map(str, inputs))}")
    return paths, references


def checked_images(paths: list[Path]) -> None:
    """DataError naming every image that does not open and decode."""
    from tuneforge.data.images import image_problem

    problems = [f"{path}: {problem}" for path in paths if (problem := image_problem(path)[0])]
    if problems:
        raise DataError(f"{len(problems)} bad image(s); nothing was predicted:\n  " + "\n  ".join(problems[:20]))


def run_image_predict(args, console: Console) -> int:
    paths, references = image_inputs([args.file, *args.more])
    checked_images(paths)  # before the model: bad input fails fast
    from PIL import Image

    from tuneforge.models.image_classifier import load_image_classifier

    classifier = load_image_classifier(args.model)
    predictions = []
    for start in range(0, len(paths), args.batch_size):
        images = []
        for path in paths[start : start + args.batch_size]:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        predictions += classifier.classify(images, args.batch_size, args.threshold)
    from tuneforge.serve.predict import emit

    emit([{"source": str(path), **prediction.as_dict()} for path, prediction in zip(paths, predictions)], args.out,
         console)
    labels = classifier.labels
    if all(r is not None and r in labels.label2id for r in references) and not labels.multi_label:
        from tuneforge.evaluate.classification import score

        report = score([p.label for p in predictions], references, labels)
        console.print(f"against the label folders: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    return 0
