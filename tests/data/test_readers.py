"""Readers per container: what each yields, where it says each record is, and how bad input is reported."""

import json
import signal
from pathlib import Path

import pytest

from tuneforge.data.formats import read_records
from tuneforge.data.readers import RawRecord, expand, read, read_json_lines
from tuneforge.errors import DataError

BOM = b"\xef\xbb\xbf"


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def located(path: Path) -> list[tuple[str, object, str | None]]:
    """(location without the folder, value, problem) for every raw record of a file."""
    return [(r.location.replace(f"{path.parent}/", ""), r.value, r.problem) for r in read(str(path))]


def texts(*items: str) -> str:
    return "".join(json.dumps({"text": item}) + "\n" for item in items)


# --- JSON Lines ----------------------------------------------------------------------------------


def test_jsonl_lines_blank_lines_crlf_and_bom(tmp_path):
    path = write(tmp_path / "a.jsonl", BOM + b'{"text": "one"}\r\n\r\n   \n{"text": "two"}\r\n{"text": "three"}')
    assert located(path) == [("a.jsonl:1", {"text": "one"}, None), ("a.jsonl:4", {"text": "two"}, None),
                             ("a.jsonl:5", {"text": "three"}, None)]


def test_ndjson_suffix_and_uppercase_suffix_are_json_lines(tmp_path):
    assert located(write(tmp_path / "a.ndjson", texts("x"))) == [("a.ndjson:1", {"text": "x"}, None)]
    assert located(write(tmp_path / "B.JSONL", texts("y"))) == [("B.JSONL:1", {"text": "y"}, None)]


def test_jsonl_bad_lines_do_not_stop_the_read(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "1"}\n{"text": "2"}\n\x00garbage\xff\n{"text": "4"}\n{"text": \n')
    assert located(path) == [
        ("a.jsonl:1", {"text": "1"}, None),
        ("a.jsonl:2", {"text": "2"}, None),
        ("a.jsonl:3", None, "not valid UTF-8 (byte 8 of the line)"),
        ("a.jsonl:4", {"text": "4"}, None),
        ("a.jsonl:5", None, "invalid JSON: Expecting value (column 10)"),
    ]


def test_jsonl_is_streamed(tmp_path):
    """The first record comes out before the rest of the file is read: the tail, rewritten after
    the first record was taken, is read as rewritten."""
    filler = "".join(json.dumps({"n": n, "pad": "x" * 40}) + "\n" for n in range(20_000))  # about 1.2 MB
    path = write(tmp_path / "big.jsonl", texts("first") + filler + texts("old!"))
    records = read_json_lines(path)
    assert next(records) == RawRecord(f"{path}:1", {"text": "first"})
    with path.open("r+b") as handle:
        handle.seek(-len(texts("old!")), 2)
        handle.write(texts("new!").encode())
    rest = list(records)
    assert len(rest) == 20_001
    assert rest[-1] == RawRecord(f"{path}:20002", {"text": "new!"})


def test_number_too_long_to_convert_is_a_bad_record_not_a_crash(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"n": ' + "9" * 5000 + "}\n" + texts("after"))
    [(where, value, problem), after] = located(path)
    assert (where, value) == ("a.jsonl:1", None)
    assert problem.startswith("invalid JSON: Exceeds the limit (4300 digits)")
    assert after == ("a.jsonl:2", {"text": "after"}, None)


def test_deeply_nested_line(tmp_path):
    path = write(tmp_path / "a.jsonl", "[" * 100_000 + "]" * 100_000 + "\n" + texts("ok"))
    assert located(path) == [("a.jsonl:1", None, "invalid JSON: nested too deeply"), ("a.jsonl:2", {"text": "ok"}, None)]


# --- JSON (array, one object, JSON Lines saved as .json) -----------------------------------------


ARRAY = """[
  {"text": "a"},
  {
    "text": "b"
  },

  {"text": "c"}, 7
]
"""


def test_json_array_elements_carry_the_line_they_start_on(tmp_path):
    path = write(tmp_path / "a.json", BOM + ARRAY.encode())
    assert located(path) == [("a.json:2", {"text": "a"}, None), ("a.json:3", {"text": "b"}, None),
                             ("a.json:7", {"text": "c"}, None), ("a.json:7", 7, None)]


@pytest.mark.parametrize("text,expected", [
    ('[\n{"text": "a"},\n{"text": "b" "c"}\n]', [("a.json:2", {"text": "a"}, None),
                                              ("a.json:3", None, "invalid JSON: Expecting ',' delimiter (column 14)")]),
    ('[\n{"text": "a"}\n{"text": "b"}\n]', [("a.json:2", {"text": "a"}, None),
                                          ("a.json:3", None, "invalid JSON: expected ',' or ']' between records")]),
    ('[\n{"text": "a"},\n', [("a.json:2", {"text": "a"}, None),
                            ("a.json:3", None, "invalid JSON: the array is not closed with ']'")]),
    ('[{"text": "a"}]\n\n[{"text": "b"}]\n', [("a.json:1", {"text": "a"}, None),
                                           ("a.json:3", None, "invalid JSON: more data after the array's closing ']'")]),
    ('[\n{"n": ' + "1" * 5000 + "}\n]", [("a.json:2", None, "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion")]),
    ("[" * 50_000 + "]" * 50_000, [("a.json:1", None, "invalid JSON: nested too deeply")]),
    ("[]", []),
    ("  \n", []),
])
def test_json_array_problems(tmp_path, text, expected):
    assert located(write(tmp_path / "a.json", text)) == expected


def test_json_single_object_and_json_lines_saved_as_json(tmp_path):
    one = write(tmp_path / "one.json", '\n\n{\n  "text": "only"\n}\n')
    assert located(one) == [("one.json:3", {"text": "only"}, None)]
    lines = write(tmp_path / "lines.json", texts("a", "b") + "\n{broken\n" + texts("d"))
    assert located(lines) == [("lines.json:1", {"text": "a"}, None), ("lines.json:2", {"text": "b"}, None),
                              ("lines.json:4", None, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
                              ("lines.json:5", {"text": "d"}, None)]


def test_pretty_printed_object_broken_on_line_7_names_line_7(tmp_path):
    text = '{\n  "instruction": "a",\n  "input": "",\n  "output": "b",\n  "system": "c",\n  "x": 1\n  "y": 2\n}\n'
    assert located(write(tmp_path / "a.json", text)) == [("a.json:7", None, "invalid JSON: Expecting ',' delimiter (column 3)")]


def test_json_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "a.json", b'[\n{"text": "a"},\n{"text": "caf\xe9"}\n]')
    assert located(path) == [("a.json:3", None, "not valid UTF-8 (byte 30 of the file)")]


# --- CSV / TSV -----------------------------------------------------------------------------------


def test_csv_rows_keyed_by_header_with_quoted_multiline_cells(tmp_path):
    path = write(tmp_path / "a.csv", BOM + b'text,label\r\n"line one\r\nline two",x\r\n\r\n,\r\nplain,"y, z"\r\n')
    assert located(path) == [("a.csv:2", {"text": "line one\r\nline two", "label": "x"}, None),
                             ("a.csv:6", {"text": "plain", "label": "y, z"}, None)]


def test_tsv_and_wrong_column_count(tmp_path):
    path = write(tmp_path / "a.tsv", "text\tlabel\na\tb\nonly one\nc\td\te\nf\tg\n")
    assert located(path) == [
        ("a.tsv:2", {"text": "a", "label": "b"}, None),
        ("a.tsv:3", None, "expected 2 columns (text, label), got 1"),
        ("a.tsv:4", None, "expected 2 columns (text, label), got 3"),
        ("a.tsv:5", {"text": "f", "label": "g"}, None),
    ]


def test_csv_not_utf8_on_line_7_names_line_7_and_reads_on(tmp_path):
    rows = b"".join(b"row %d,ok\n" % n for n in range(2, 7))
    path = write(tmp_path / "a.csv", b"text,label\n" + rows + b"caf\xe9,bad\nrow 8,ok\n")
    result = located(path)
    assert len(result) == 7
    assert result[5] == ("a.csv:7", None, "not valid UTF-8 (byte 0xE9 in column 1)")
    assert result[6] == ("a.csv:8", {"text": "row 8", "label": "ok"}, None)


def test_csv_not_utf8_far_into_a_large_file_names_its_line(tmp_path):
    rows = b"".join(b"row %d,ok\n" % n for n in range(2, 5002))  # the decoder reads ahead in chunks
    path = write(tmp_path / "a.csv", b"text,label\n" + rows + b"\xff,bad\n")
    result = located(path)
    assert result[-1] == ("a.csv:5002", None, "not valid UTF-8 (byte 0xFF in column 1)")
    assert sum(problem is None for _, _, problem in result) == 5000


def test_csv_header_only_blank_lines_before_header_and_bad_header(tmp_path):
    assert located(write(tmp_path / "h.csv", "text,label\n")) == []
    assert located(write(tmp_path / "b.csv", "\n\ntext,label\nx,y\n")) == [("b.csv:4", {"text": "x", "label": "y"}, None)]
    assert located(write(tmp_path / "bad.csv", b"t\xe9xt,label\nx,y\n")) == [
        ("bad.csv:1", None, "not valid UTF-8 (byte 0xE9 in column 1, in the header)")]


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_rows_with_nested_messages(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 1}]},
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}]},
    ]), path)
    raw = list(read(str(path)))
    assert [r.location for r in raw] == [f"{path}[row 0]", f"{path}[row 1]"]
    # Parquet gives every row every struct field; absent ones come back as None
    assert raw[1].value == {"messages": [{"role": "user", "content": "Bye", "weight": None},
                                         {"role": "assistant", "content": "Goodbye", "weight": None}]}
    first, second = read_records(path)
    assert [(m.role, m.content, m.weight) for m in first.messages] == [("user", "Hi", None), ("assistant", "Hello", 1)]
    assert [(m.role, m.content) for m in second.messages] == [("user", "Bye"), ("assistant", "Goodbye")]
    assert second.source == f"{path}[row 1]"


def test_parquet_rows_are_numbered_across_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": [f"doc {n}" for n in range(2500)]}), path, row_group_size=700)
    raw = list(read(str(path)))
    assert len(raw) == 2500
    assert [raw[n].location for n in (0, 1024, 2499)] == [f"{path}[row {n}]" for n in (0, 1024, 2499)]
    assert [raw[n].value for n in (0, 1024, 2499)] == [{"text": "doc 0"}, {"text": "doc 1024"}, {"text": "doc 2499"}]


def test_parquet_not_parquet_and_corrupt_pages(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with pytest.raises(DataError, match=r"junk.parquet: not a readable Parquet file"):
        list(read(str(write(tmp_path / "junk.parquet", b"PAR1 this is not parquet"))))
    path = tmp_path / "corrupt.parquet"
    pq.write_table(pa.table({"text": [f"document {n} " * 20 for n in range(3000)]}), path,
                   row_group_size=1000, compression="snappy")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt.parquet\[row \d+\]: not a readable Parquet file from this row on"):
        list(read(str(path)))


# --- plain text ----------------------------------------------------------------------------------


def test_text_file_is_one_document(tmp_path):
    body = "Chapter 1\n\nIt was a cold morning.\n"
    assert located(write(tmp_path / "book.txt", BOM + body.encode())) == [("book.txt:1", {"text": body}, None)]
    assert located(write(tmp_path / "empty.txt", " \n\n")) == []
    assert located(write(tmp_path / "latin.txt", b"line one\nline two\ncaf\xe9\n")) == [
        ("latin.txt:3", None, "not valid UTF-8 (byte 21 of the file)")]
    [record] = read_records(tmp_path / "book.txt")
    assert (record.kind, record.text) == ("text", body)


# --- unsupported files, folders, globs -----------------------------------------------------------


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"notes.md: unsupported file type .md; expected one of .jsonl, .ndjson"):
        list(read(str(write(tmp_path / "notes.md", "# notes"))))
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        expand(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"missing.jsonl: cannot read"):
        list(read(str(tmp_path / "missing.jsonl")))


def make_tree(root: Path) -> Path:
    for name in ["b.jsonl", "a.json", "sub/c.csv", "sub/deeper/d.parquet", "z.TXT", "README.md", "notes.py", "sub/e.tsv"]:
        write(root / name, "x")
    (root / "folder.jsonl").mkdir()  # a folder named like a data file is no file
    return root


def test_folder_expands_to_its_data_files_sorted_recursively(tmp_path):
    root = make_tree(tmp_path / "data")
    names = [str(Path(p).relative_to(root)) for p in expand(root)]
    assert names == ["a.json", "b.jsonl", "sub/c.csv", "sub/deeper/d.parquet", "sub/e.tsv", "z.TXT"]


def test_glob_expands_to_matching_data_files_sorted(tmp_path):
    root = make_tree(tmp_path / "data")
    assert [Path(p).name for p in expand(f"{root}/*.json*")] == ["a.json", "b.jsonl"]
    assert [str(Path(p).relative_to(root)) for p in expand(f"{root}/**/*")] == [
        "a.json", "b.jsonl", "sub/c.csv", "sub/deeper/d.parquet", "sub/e.tsv", "z.TXT"]
    with pytest.raises(DataError, match=r"no data files .* match this pattern"):
        expand(f"{root}/*.md")


def test_empty_folder_and_hub_id(tmp_path):
    write(tmp_path / "docs" / "README.md", "x")
    with pytest.raises(DataError, match=r"docs: folder holds no data files"):
        expand(tmp_path / "docs")
    assert expand("hf:org/name#validation") == ["hf:org/name#validation"]


# --- hub datasets, offline -----------------------------------------------------------------------


class Timeout(Exception):
    pass


def test_hub_dataset_offline_is_a_clear_data_error(monkeypatch):
    pytest.importorskip("datasets", reason="the `datasets` package is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def give_up(signum, frame):
        raise Timeout("reading a hub dataset offline took more than 20 s: it is trying the network")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(20)
    try:
        with pytest.raises(DataError) as error:
            read_records("hf:tuneforge-tests/no-such-dataset-3f9a#train")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = str(error.value)
    assert message.startswith("hf:tuneforge-tests/no-such-dataset-3f9a#train: ")
    assert "offline" in message and "name the files" in message


def test_images_given_as_records_are_named_as_images(tmp_path):
    """A folder of images (or one image) given to a text command is said to be images, with where they do train."""
    folder = tmp_path / "photos"
    write(folder / "cat" / "001.png", b"\x89PNG")
    write(folder / "dog" / "002.JPG", b"\xff\xd8")
    with pytest.raises(DataError, match=r"photos: a folder of images, not of data records: .*image_classify"):
        expand(folder)
    with pytest.raises(DataError, match=r"photos: a folder of images, .*tuneforge predict"):
        list(read(str(folder)))
    with pytest.raises(DataError, match=r"001.png: an image, not data records"):
        list(read(str(folder / "cat" / "001.png")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: folder holds no data files"):
        expand(empty)
    with pytest.raises(DataError, match=r"notes.docx: unsupported file type \.docx"):
        list(read(str(write(tmp_path / "notes.docx", b"x"))))
