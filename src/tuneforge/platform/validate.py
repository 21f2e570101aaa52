"""Checking a job's files before it queues: every record read, converted and tokenized as training will.

Conversations and preference pairs (supervised and dpo jobs) go through `tuneforge data inspect`
(data/inspect.py) with the job's tokenizer (no weights are loaded) and the run file's format,
columns, roles, template and max_seq_length, and must be of the kinds the method trains (a
preference file given to a supervised job is named here, not at training). Prompt records
(reinforcement jobs) are read as `task: grpo` reads them (data/prompts.py). The first problem fails
the job at validating_files with an OpenAI-shaped error that names the file (its id and upload
name) and the line, and says how many more records have problems; a file with no usable record
fails too. The training records counted here set the job's checkpoint cadence (translate.py).
tests/platform/test_requests.py pins the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config import RunConfig
from tuneforge.data.formats import Mapping
from tuneforge.data.inspect import inspect_file
from tuneforge.errors import TuneforgeError
from tuneforge.platform.files import StoredFile


@dataclass
class JobError(Exception):
    code: str
    message: str
    param: str | None = None

    def to_api(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param}


def check_prompts(config: RunConfig, files: dict[str, StoredFile], kinds: tuple[str, ...] = ()) -> int:
    """The number of prompt records in the training file; JobError naming the first bad one."""
    from tuneforge.data.prompts import read_prompts

    records = {}
    for param, stored in files.items():
        try:
            records[param] = len(read_prompts([stored.path]))
        except TuneforgeError as exc:
            message = str(exc).replace(f"{stored.path}:", f"{stored.filename}, line ").replace(stored.path, stored.filename)
            raise JobError("invalid_file", f"{param} {stored.id}: {message}", param) from None
    return records["training_file"]


def check_files(config: RunConfig, files: dict[str, StoredFile], kinds: tuple[str, ...]) -> int:
    """The number of usable training records, each one of `kinds`; JobError for the first problem.
    `files`: param -> the stored file."""
    from tuneforge.models.tokenizer import training_tokenizer

    try:
        tokenizer, stop_ids = training_tokenizer(config.model.name, config.data.template)
    except TuneforgeError as exc:
        raise JobError("invalid_model", f"The model '{config.model.name}' cannot be loaded: {exc}", "model") from None
    mapping = Mapping(config.data.columns, config.data.roles)
    records = {}
    for param, stored in files.items():
        try:
            stats = inspect_file(stored.path, config.data.format, mapping, tokenizer, stop_ids,
                                 config.train.max_seq_length)
        except TuneforgeError as exc:
            raise JobError("invalid_file", f"{param} {stored.id} ({stored.filename}): {named(str(exc), stored)}",
                           param) from None
        if stats.problems:
            first = stats.problems[0]
            where = named(first.location, stored)
            more = len(stats.problems) - 1
            tail = f" ({more} more record{'s' * (more > 1)} with problems; `tuneforge data inspect` lists them)" \
                if more else ""
            raise JobError("invalid_file", f"{param} {stored.id}: {where}: {first.reason}{tail}", param)
        if stats.records == 0:
            raise JobError("invalid_file", f"{param} {stored.id} ({stored.filename}) holds no records", param)
        others = {kind: n for kind, n in stats.kinds.items() if kind not in kinds}
        if others:
            held = ", ".join(f"{n} {kind}" for kind, n in sorted(others.items()))
            raise JobError("invalid_file", f"{param} {stored.id} ({stored.filename}) holds {held} record(s); this "
                           f"method trains {' or '.join(kinds)} records", param)
        records[param] = stats.records
    return records["training_file"]


def named(text: str, stored: StoredFile) -> str:
    """The stored path in a message, written as the upload's name: `/…/file-abc.jsonl:3` -> `train.jsonl, line 3`."""
    line = text.removeprefix(stored.path + ":")
    if line != text and line.isdigit():
        return f"{stored.filename}, line {line}"
    return text.replace(stored.path, stored.filename)
