"""The image_classify task's data: labelled image files of each split, found, validated with PIL, split stratified.

Two layouts: folders (ImageFolder: `DIR/LABEL/*.jpg`; a DIR holding `train/`, `val/` or `validation/`
and `test/` gives every split at once), or JSONL/JSON/CSV/TSV rows with an image path relative to the
file and a label (a list of labels for multi-label data; keys renamed by data.columns).  Every image is
opened and decoded here, before any model loads: a missing, empty, unreadable, truncated image or one
in a mode that is not a picture (16-bit or float) stops the run with each one named by path (and
file:line for a row), unless data.on_invalid: skip, which drops them and says so
(tests/images/test_bad_images.py).  Reading the bytes once also hashes them, so a held-out image that
is a copy of a training image is reported (it flatters the held-out scores).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.classification import held_out_splits
from tuneforge.data.readers import IMAGE_SUFFIXES
from tuneforge.errors import DataError
from tuneforge.models.labels import Label

TABLE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv"}
# Modes PIL converts to RGB faithfully; 16-bit and float images ("I", "F", "I;16") need a decision about scale.
PICTURE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation", "valid"), "test": ("test",)}
SHOWN = 20  # problems listed in an error; the rest are counted


@dataclass
class ImageExamples:
    paths: list[Path] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the image's path, or file:line (path) of a row
    hashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: Path, label: Label, source: str) -> None:
        self.paths.append(path)
        self.labels.append(label)
        self.sources.append(source)

    def subset(self, rows) -> ImageExamples:
        rows = [int(r) for r in rows]
        return ImageExamples(*([values[r] for r in rows] for values in (self.paths, self.labels, self.sources,
                                                                          self.hashes)))


@dataclass
class ImageData:
    train: ImageExamples
    validation: ImageExamples
    test: ImageExamples
    skipped: list[str]  # "source: problem" of images dropped by on_invalid: skip
    copies: list[str]  # held-out images whose bytes equal a training image's

    def manifest(self) -> dict:
        return {"train_images": len(self.train), "validation_images": len(self.validation),
                "test_images": len(self.test), "skipped_images": self.skipped, "held_out_copies_of_train": self.copies}


def image_problem(path: Path) -> tuple[str | None, str]:
    """(what is wrong with an image file or None, the sha256 of its bytes)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "file not found", ""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return "empty file (0 bytes)", digest
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            if image.mode not in PICTURE_MODES:
                return f"unsupported image mode {image.mode} (16-bit or float pixels); convert it to RGB or L", digest
            image.load()
            if min(image.size) < 1:
                return f"zero-size image {image.size}", digest
    except UnidentifiedImageError:
        return "not an image PIL can read (unknown or corrupt format)", digest
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image ({exc})", digest
    return None, digest


def label_of(value, source: str) -> Label:
    if isinstance(value, list):
        names = tuple(sorted({str(v).strip() for v in value}))
        if not names or not all(names):
            raise DataError(f"{source}: an empty label list or an empty label")
        return names
    if value is None or not str(value).strip():
        raise DataError(f"{source}: no label")
    return str(value).strip()


def folder_rows(folder: Path, split: ImageExamples) -> None:
    """ImageFolder: each subfolder is a label and holds that label's images (nested folders included)."""
    loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DataError(f"{loose[0]}: an image outside a label folder; put images in {folder}/LABEL/")
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(label_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                split.add(path, label_dir.name, str(path))


def table_rows(file: Path, columns: dict[str, str], split: ImageExamples) -> None:
    """JSONL/JSON/CSV/TSV rows: an image path (relative to the file) and a label."""
    image_key, label_key = columns.get("image", "image"), columns.get("label", "label")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if file.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if file.suffix.lower() == ".tsv" else ",")
        rows = [(number, row) for number, row in enumerate(reader, 2)]
    elif file.suffix.lower() == ".json":
        rows = list(enumerate(json.loads(text), 1))
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file}:{number}: not JSON ({exc.msg})") from None
    for number, row in rows:
        where = f"{file}:{number}"
        if not isinstance(row, dict) or not row.get(image_key):
            raise DataError(f"{where}: no '{image_key}' (the image path; rename the key with data.columns.image)")
        if label_key not in row:
            raise DataError(f"{where}: no '{label_key}' (rename the key with data.columns.label)")
        path = (file.parent / str(row[image_key])).resolve()
        split.add(path, label_of(row[label_key], where), f"{where} ({path})")


def split_sources(config: DataConfig) -> dict[str, list[Path]]:
    """Each split's sources, a root folder holding train/ val/ test/ folders spread over the splits it has."""
    sources = {split: [Path(p) for s in getattr(config, split) for p in sorted(glob.glob(s, recursive=True))
                       or [s]] for split in SPLIT_FOLDERS}
    roots = [p for p in sources["train"] if p.is_dir() and (p / "train").is_dir()]
    for root in roots:
        sources["train"][sources["train"].index(root)] = root / "train"
        for split in ("validation", "test"):
            found = [root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()]
            if found and not getattr(config, split):
                sources[split].append(found[0])
    return sources


def read_split(sources: list[Path], columns: dict[str, str]) -> ImageExamples:
    split = ImageExamples()
    for source in sources:
        if source.is_dir():
            folder_rows(source, split)
        elif source.suffix.lower() in TABLE_SUFFIXES:
            table_rows(source, columns, split)
        else:
            raise DataError(f"{source}: give a folder of label folders, or a JSONL/JSON/CSV/TSV file of image + label rows")
    return split


def validated(split: ImageExamples, problems: list[str]) -> ImageExamples:
    """The split's images that open and decode; each one that does not is added to `problems`, named."""
    keep = []
    for row, (path, source) in enumerate(zip(split.paths, split.sources)):
        problem, digest = image_problem(path)
        split.hashes.append(digest)
        if problem:
            problems.append(f"{source if source != str(path) else path}: {problem}")
        else:
            keep.append(row)
    return split.subset(keep)


def enforce(problems: list[str], on_invalid: str) -> None:
    """DataError naming every bad image of every split, unless data.on_invalid: skip."""
    if problems and on_invalid == "error":
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataError(f"{len(problems)} bad image(s); nothing was trained (data.on_invalid: skip drops them):\n  "
                        + "\n  ".join(problems[:SHOWN]) + more)


def load_images(config: DataConfig, seed: int) -> ImageData:
    """Every split's images, validated, with the held-out splits cut from train where they have no sources."""
    sources = split_sources(config)
    skipped: list[str] = []
    splits = {name: validated(read_split(paths, config.columns), skipped) for name, paths in sources.items()}
    enforce(skipped, config.on_invalid)
    train = splits["train"]
    if not len(train):
        raise DataError(f"no training images in {', '.join(map(str, sources['train']))}")
    val_fraction = 0.0 if sources["validation"] else config.val_split
    test_fraction = 0.0 if sources["test"] else config.test_split
    train, validation, test = held_out_splits(train, splits["validation"], splits["test"], val_fraction,
                                              test_fraction, seed)
    seen = set(train.hashes)
    copies = [s for split in (validation, test) for s, h in zip(split.sources, split.hashes) if h in seen]
    return ImageData(train, validation, test, skipped, copies)
