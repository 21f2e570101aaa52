"""Read raw records (dicts) from files, folders, globs and hub datasets, one at a time.

Readers stream: a JSONL, CSV or Parquet file of a million records is never held in memory
whole (a JSON array is the exception: the format has to be parsed as one document).  A record
that cannot be read (bad JSON, bad bytes, a short CSV row) comes out as a `RawRecord` with a
`problem` instead of stopping the read, so a user sees every bad line in one pass.

Locations are `file:line` for line-based files (and for JSON arrays: the line each element
starts on), `file[row N]` for Parquet, `hf:NAME[N]` for hub datasets.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import DataError

JSON_LINES = (".jsonl", ".ndjson")
JSON = (".json",)
CSV = (".csv", ".tsv")
PARQUET = (".parquet",)
TEXT = (".txt",)
READABLE = JSON_LINES + JSON + CSV + PARQUET + TEXT
HUB_PREFIX = "hf:"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGES_ELSEWHERE = ("images train with task: image_classify (docs/images.md) and are scored by "
                    "`tuneforge predict RUN IMAGES`")


@dataclass(frozen=True)
class RawRecord:
    location: str
    value: object = None  # the parsed record (a dict, unless the file holds something else)
    problem: str | None = None  # why the record could not be read; value is None then


def expand(source: str | Path) -> list[str]:
    """The files (or the one hub id) a data source names: a file, a folder, a glob, or hf:NAME."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return [text]
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE)
        if not files:
            raise DataError(f"{path}: {not_records(path) or 'folder holds no data files'} ({', '.join(READABLE)})")
        return [str(p) for p in files]
    if glob.has_magic(text):
        files = sorted(
            p for p in glob.glob(text, recursive=True) if Path(p).is_file() and Path(p).suffix.lower() in READABLE
        )
        if not files:
            raise DataError(f"{text}: no data files ({', '.join(READABLE)}) match this pattern")
        return files
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return [text]


def read(source: str) -> Iterator[RawRecord]:
    """Every record of one file or hub dataset, in order."""
    if source.startswith(HUB_PREFIX):
        yield from read_hub(source)
        return
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in JSON_LINES:
        yield from read_json_lines(path)
    elif suffix in JSON:
        yield from read_json(path)
    elif suffix in CSV:
        yield from read_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in PARQUET:
        yield from read_parquet(path)
    elif suffix in TEXT:
        yield from read_text(path)
    else:
        raise DataError(f"{path}: {not_records(path) or 'unsupported file type ' + (suffix or '(none)')}; expected "
                        f"one of {', '.join(READABLE)}")


def not_records(path: Path) -> str | None:
    """What a text command is given instead of records when it is an image or a folder of them (said, never
    skipped: tests/data/test_readers.py)."""
    if path.is_dir():
        holds = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())
        return f"a folder of images, not of data records: {IMAGES_ELSEWHERE}" if holds else None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return f"an image, not data records: {IMAGES_ELSEWHERE}"
    return None


def open_binary(path: Path):
    try:
        return path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def parse_line(location: str, raw: bytes, first: bool) -> RawRecord | None:
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRecord(location, problem=f"not valid UTF-8 (byte {exc.start} of the line)")
    if not line.strip():
        return None
    try:  # without its line ending, so an error at the end of a cut-off line names its column
        return RawRecord(location, json.loads(line.rstrip("\r\n")))
    except json.JSONDecodeError as exc:
        return RawRecord(location, problem=f"invalid JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:  # json.loads' int conversion: a number longer than sys.get_int_max_str_digits()
        return RawRecord(location, problem=f"invalid JSON: {number_problem(exc)}")
    except RecursionError:
        return RawRecord(location, problem="invalid JSON: nested too deeply")


def number_problem(exc: ValueError) -> str:
    return str(exc).split(":")[0] or "a value cannot be converted"


def read_json_lines(path: Path) -> Iterator[RawRecord]:
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            record = parse_line(f"{path}:{number}", raw, number == 1)
            if record is not None:
                yield record


def whole_text(path: Path) -> Generator[RawRecord, None, str | None]:
    """The file's text (formats read whole); on bad bytes, yields the problem with its line and returns None."""
    with open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield RawRecord(f"{path}:{line}", problem=f"not valid UTF-8 (byte {exc.start} of the file)")
        return None


def read_json(path: Path) -> Iterator[RawRecord]:
    """A JSON array (LLaMA-Factory's files), one object, or JSON Lines saved as .json."""
    text = yield from whole_text(path)
    if text is None:
        return
    start = len(text) - len(text.lstrip())
    if text.startswith("[", start):
        yield from json_array(path, text, start + 1)
        return
    if not text.strip():
        return
    first = text.count("\n", 0, start) + 1
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        error = exc  # not one document: read it as JSON Lines, unless it is one document broken further down
    except RecursionError:
        yield RawRecord(f"{path}:{first}", problem="invalid JSON: nested too deeply")
        return
    except ValueError as exc:
        yield RawRecord(f"{path}:{first}", problem=f"invalid JSON: {number_problem(exc)}")
        return
    else:
        yield RawRecord(f"{path}:{first}", value)
        return
    first_line = text.split("\n", first)[first - 1]
    if error.lineno > first and parse_line("", first_line.encode("utf-8"), False).problem is not None:
        # The first line is no JSON value by itself (a pretty-printed object): name the line that breaks it.
        yield RawRecord(f"{path}:{error.lineno}", problem=f"invalid JSON: {error.msg} (column {error.colno})")
        return
    for number, line in enumerate(text.split("\n"), start=1):
        record = parse_line(f"{path}:{number}", line.encode("utf-8"), False)
        if record is not None:
            yield record


def json_array(path: Path, text: str, position: int) -> Iterator[RawRecord]:
    """Each element of a JSON array with the line it starts on; a syntax error ends the read."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    expect_value = True
    while True:
        position = skip_space(text, position)
        if position >= len(text):
            yield RawRecord(f"{path}:{line_at(len(text))}", problem="invalid JSON: the array is not closed with ']'")
            return
        char = text[position]
        if char == "]":
            rest = skip_space(text, position + 1)
            if rest < len(text):
                yield RawRecord(f"{path}:{line_at(rest)}", problem="invalid JSON: more data after the array's closing ']'")
            return
        if char == "," and not expect_value:
            position, expect_value = position + 1, True
            continue
        if not expect_value:
            yield RawRecord(f"{path}:{line_at(position)}", problem="invalid JSON: expected ',' or ']' between records")
            return
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            yield RawRecord(f"{path}:{exc.lineno}", problem=f"invalid JSON: {exc.msg} (column {exc.colno})")
            return
        except RecursionError:
            yield RawRecord(f"{path}:{line_at(position)}", problem="invalid JSON: nested too deeply")
            return
        except ValueError as exc:
            yield RawRecord(f"{path}:{line_at(position)}", problem=f"invalid JSON: {number_problem(exc)}")
            return
        yield RawRecord(f"{path}:{line_at(position)}", value)
        position, expect_value = end, False


def skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def read_csv(path: Path, delimiter: str) -> Iterator[RawRecord]:
    """One record per row, keyed by the header; cells stay strings (formats parse JSON cells)."""
    with open_binary(path) as handle:
        # Bad bytes decode to lone surrogates, so the row holding them is reported (the decoder
        # works ahead of the CSV reader in 8 KiB chunks: a decode error would name the wrong line).
        text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                header = next(reader, None)  # blank lines before the header
            if header is None:
                return
            if bad_bytes(header):
                yield RawRecord(f"{path}:{reader.line_num}", problem=f"not valid UTF-8 ({bad_bytes(header)}, in the header)")
                return
            end_line = reader.line_num
            for row in reader:
                location = f"{path}:{end_line + 1}"
                end_line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if bad_bytes(row):
                    yield RawRecord(location, problem=f"not valid UTF-8 ({bad_bytes(row)})")
                    continue
                if len(row) != len(header):
                    yield RawRecord(location, problem=f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}")
                    continue
                yield RawRecord(location, dict(zip(header, row)))
        except csv.Error as exc:
            yield RawRecord(f"{path}:{reader.line_num}", problem=f"invalid CSV: {exc}")


def bad_bytes(row: list[str]) -> str | None:
    """The first byte that is not UTF-8 in a row decoded with surrogateescape, described."""
    for column, cell in enumerate(row, start=1):
        for char in cell:
            if "\udc80" <= char <= "\udcff":
                return f"byte 0x{ord(char) - 0xDC00:02X} in column {column}"
    return None


def read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    row = 0
    try:
        for batch in table.iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                yield RawRecord(f"{path}[row {row}]", value)
                row += 1
    except (pa.ArrowException, OSError) as exc:  # a corrupt page (e.g. bad compressed data) past the footer
        raise DataError(f"{path}[row {row}]: not a readable Parquet file from this row on: {exc}") from None


def read_text(path: Path) -> Iterator[RawRecord]:
    """A plain-text file is one document, for continued pretraining."""
    text = yield from whole_text(path)
    if text and text.strip():
        yield RawRecord(f"{path}:1", {"text": text})


def offline() -> bool:
    """Whether the Hugging Face offline switches are on now (same truthy values as huggingface_hub)."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_hub(source: str) -> Iterator[RawRecord]:
    """hf:NAME or hf:NAME#SPLIT, streamed with the `datasets` library (online only)."""
    name, _, split = source.removeprefix(HUB_PREFIX).partition("#")
    if offline():  # checked here: `datasets` reads these variables once, when it is first imported
        raise DataError(
            f"{source}: hub datasets are streamed from the network, and offline mode is on "
            "(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE); download it elsewhere and name the files"
        )
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading hub datasets needs the `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, split=split or "train", streaming=True)
        for index, value in enumerate(rows):
            yield RawRecord(f"{source}[{index}]", value)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(
            f"{source}: cannot load this hub dataset ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "hub datasets need network access; offline, download it elsewhere and name the files"
        ) from None
    except Exception as exc:  # datasets raises its own hierarchy for missing/offline datasets
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "requests", "httpx")):
            raise DataError(f"{source}: cannot load this hub dataset: {type(exc).__name__}: {exc}") from None
        raise
