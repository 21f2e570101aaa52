"""`tuneforge curate`: logged conversations that users rated become the next round's training data.

What each logged request becomes, decided by its latest feedback (a user who changes their mind
counts once, as they last said):

* +1, no correction: an SFT chat record, the logged messages + the model's answer;
* a correction (with either rating): an SFT chat record with the corrected answer;
* -1 with a correction: also a preference pair, prompt -> chosen = the correction,
  rejected = the model's answer;
* skipped, counted by reason: failed requests, text completions (a raw prompt sent without the
  chat template is not a conversation turn, and the chat file cannot say otherwise), classify
  requests (/v1/classify: texts and their labels, not a conversation), requests
  without feedback, -1 without a correction (nothing to learn but "not this"), approved answers
  cut off at the token limit (training them with an end-of-turn token would teach stopping
  mid-sentence), and conversations the chat format rejects (two user turns in a row, ...).

Chat records go to FILE in the OpenAI fine-tuning shape the readers detect as `chat`
(`{"messages": [...]}`); preference pairs to FILE with `.preference.jsonl` in place of `.jsonl`, in
the conversational prompt/chosen/rejected shape the readers detect as `preference` (one file per
format: the readers detect a file's format from its first record).  Every record is parsed back
with the readers' own converter before it is kept, so the files read back as written.

PII is redacted (data.cleaning.redact_pii) before deduplication, unless --no-redact, so two
conversations differing only by an email address count as one.  Duplicates are dropped against
the --train files and among the curated records: exact after `normalize` (case, Unicode form,
whitespace), then near (the data pipeline's MinHash NearDuplicates, Jaccard 0.85 of 5-word
shingles).  Exact duplicates are found with a digest -> record table rather than
cleaning.ExactDuplicates because a repeat of a curated record adds its request id to the kept
record's manifest entry: the manifest lists, per output line, every request it stands for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from tuneforge.data.cleaning import NearDuplicates, NearDuplicateSettings, normalize, redact_pii
from tuneforge.data.formats import Mapping, SourceReader, convert
from tuneforge.data.readers import expand
from tuneforge.data.records import Message, Record
from tuneforge.errors import ConfigError
from tuneforge.monitor.store import Feedback, LoggedRequest

CHAT_ENDPOINT = "/v1/chat/completions"
CLASSIFY_ENDPOINT = "/v1/classify"  # serve/classify.py
PREFERENCE_SUFFIX = ".preference.jsonl"
MANIFEST_SUFFIX = ".manifest.json"
ROLES = {"developer": "system"}  # OpenAI's newer name for the system message


@dataclass
class Curated:
    """One output line and where it came from."""

    kind: Literal["chat", "preference"]
    value: dict  # the JSON line
    record: Record  # as the readers parse it (its full_text is the duplicate key)
    request_ids: list[str]
    rating: int
    corrected: bool
    model: str
    model_version: str | None

    def entry(self, line: int) -> dict:
        return {"line": line, "request_ids": self.request_ids, "rating": self.rating, "corrected": self.corrected,
                "model": self.model, "model_version": self.model_version}


@dataclass
class Curation:
    requests: int = 0
    chat: list[Curated] = field(default_factory=list)
    preference: list[Curated] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> requests (or records) left out
    redacted: Counter = field(default_factory=Counter)  # PII kind -> replacements in the records written
    training_records: int = 0


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """(chat file, preference file, manifest) for --out FILE.jsonl."""
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise ConfigError(f"--out {out}: name a .jsonl file (the curated chat records are JSON Lines)")
    return out, out.with_name(out.name[: -len(".jsonl")] + PREFERENCE_SUFFIX), out.with_name(out.name + MANIFEST_SUFFIX)


class Redactor:
    """redact_pii when on, counting replacements by kind; the identity when off."""

    def __init__(self, enabled: bool, counts: Counter):
        self.enabled, self.counts = enabled, counts

    def __call__(self, text: str) -> str:
        if not self.enabled:
            return text
        text, found = redact_pii(text)
        self.counts.update(found)
        return text


def prompt_messages(request: LoggedRequest, redact: Redactor) -> list[dict]:
    return [{"role": ROLES.get(m.get("role"), m.get("role")), "content": redact(str(m.get("content") or ""))}
            for m in request.messages]


def candidates(request: LoggedRequest, ratings: list[Feedback] | None, redact: Redactor) -> list[Curated] | str:
    """What one request becomes, or the reason it is skipped."""
    if not request.ok:
        return "failed request"
    if request.endpoint == CLASSIFY_ENDPOINT:
        return "classification (texts and labels, not a conversation)"
    if request.endpoint != CHAT_ENDPOINT:
        return "text completion (a raw prompt, not a conversation)"
    if not ratings:
        return "no feedback"
    latest = ratings[-1]
    correction = (latest.correction or "").strip()
    answer = (request.output or "").strip()
    if latest.rating < 0 and not correction:
        return "rejected without a correction"
    if not correction:
        if not answer:
            return "empty answer"
        if request.finish_reason == "length":
            return "answer cut off at the token limit"
    prompt = prompt_messages(request, redact)
    paired = latest.rating < 0 and answer and normalize(answer) != normalize(correction)
    chosen = redact(correction or answer)
    try:
        chat_value = {"messages": [*prompt, {"role": "assistant", "content": chosen}]}
        found = [Curated("chat", chat_value, parse(chat_value, request, "chat"), [request.id], latest.rating,
                         bool(correction), request.model, request.model_version)]
        if paired:
            pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": redact(answer)}]}
            found.append(Curated("preference", pair, parse(pair, request, "preference"), [request.id],
                                 latest.rating, True, request.model, request.model_version))
    except ValueError:
        return "not a trainable conversation (the chat format rejects its turns)"
    return found


def parse(value: dict, request: LoggedRequest, fmt: str) -> Record:
    """The record as the readers will read it back; ValueError when they would reject it."""
    return convert(value, f"request {request.id}", fmt, Mapping())


def digest(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


class Deduplicator:
    """Exact (after normalize) and near duplicates against training records and earlier curated ones."""

    def __init__(self, settings: NearDuplicateSettings | None = None):
        self.exact: dict[bytes, Curated | None] = {}  # None: a training record
        self.near = NearDuplicates(settings)
        self.kept: dict[str, Curated] = {}  # near-duplicate key -> curated record

    def add_training(self, record: Record) -> None:
        text = record.full_text()
        self.exact.setdefault(digest(text), None)
        self.near.check(f"train {record.source}", text)

    def check(self, item: Curated) -> str | None:
        """None when `item` is new (and now kept), else the skip reason; a repeat of a curated record
        adds its request ids to that record."""
        text = item.record.full_text()
        key = digest(text)
        if key in self.exact:
            earlier = self.exact[key]
            if earlier is None:
                return "duplicate of a training record"
            earlier.request_ids += item.request_ids
            return "duplicate of a curated record"
        name = f"curated {len(self.kept)}"
        similar = self.near.check(name, text)
        if similar is not None:
            if similar not in self.kept:
                return "near duplicate of a training record"
            self.kept[similar].request_ids += item.request_ids
            return "near duplicate of a curated record"
        self.exact[key] = item
        self.kept[name] = item
        return None


def training_records(sources: list[str], redact: bool) -> Iterator[Record]:
    """Every valid record of the --train files (any format the readers know), streamed, PII-redacted like
    the curated ones when `redact`; a record the readers reject is not training data, so it is passed over."""
    quiet = Redactor(redact, Counter())  # the training data's PII is not the curated files' to count

    def clean(messages: tuple[Message, ...]) -> tuple[Message, ...]:
        return tuple(replace(m, content=quiet(m.content)) for m in messages)

    for source in sources:
        for path in expand(source):
            for item in SourceReader(path, "auto", Mapping()):
                if isinstance(item, Record):
                    yield replace(item, messages=clean(item.messages), chosen=clean(item.chosen),
                                  rejected=clean(item.rejected), text=quiet(item.text)) if redact else item


def curate(requests: list[LoggedRequest], feedback: dict[str, list[Feedback]], train: list[str] = (),
           redact: bool = True, near: NearDuplicateSettings | None = None) -> Curation:
    result = Curation(requests=len(requests))
    redactor = Redactor(redact, Counter())
    dedup = Deduplicator(near)
    for record in training_records(list(train), redact):
        dedup.add_training(record)
        result.training_records += 1
    for request in requests:
        redactor.counts = Counter()  # what this request's records had redacted, counted if one is kept
        found = candidates(request, feedback.get(request.id), redactor)
        if isinstance(found, str):
            result.skipped[found] += 1
            continue
        kept = False
        for item in found:
            reason = dedup.check(item)
            if reason is not None:
                result.skipped[f"{item.kind}: {reason}"] += 1
            else:
                (result.chat if item.kind == "chat" else result.preference).append(item)
                kept = True
        if kept:
            result.redacted.update(redactor.counts)
    return result


def jsonl(items: list[Curated]) -> str:
    return "".join(json.dumps(item.value, ensure_ascii=False) + "\n" for item in items)


def manifest(result: Curation, paths: tuple[Path, Path, Path], meta: dict) -> dict:
    chat_path, preference_path, _ = paths
    return {
        **meta,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {"chat": chat_path.name if result.chat else None,
                  "preference": preference_path.name if result.preference else None},
        "counts": {"requests": result.requests, "chat": len(result.chat), "preference": len(result.preference),
                   "training_records_checked": result.training_records, "skipped": dict(sorted(result.skipped.items())),
                   "pii_redacted": dict(sorted(result.redacted.items()))},
        "chat": [item.entry(line) for line, item in enumerate(result.chat, start=1)],
        "preference": [item.entry(line) for line, item in enumerate(result.preference, start=1)],
    }


def checked_outputs(out: Path, overwrite: bool) -> tuple[Path, Path, Path]:
    """The output paths, refused when one exists and `overwrite` is off."""
    paths = output_paths(out)
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --overwrite to replace the curated files")
    return paths


def write_curation(out: Path, result: Curation, meta: dict, overwrite: bool = False) -> tuple[Path, Path, Path]:
    """The chat file, the preference file (when there are pairs) and the manifest, each written to a
    temporary file beside it and renamed; existing outputs are refused unless `overwrite`."""
    paths = checked_outputs(out, overwrite)
    contents = {paths[0]: jsonl(result.chat) if result.chat else None,
                paths[1]: jsonl(result.preference) if result.preference else None,
                paths[2]: json.dumps(manifest(result, paths, meta), indent=2, ensure_ascii=False) + "\n"}
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    staged = {}
    try:
        for path, text in contents.items():
            if text is not None:
                staged[path] = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                with staged[path].open("w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
        for path, text in contents.items():  # the manifest last: it describes the others
            if text is None:
                path.unlink(missing_ok=True)  # an earlier curation's file this one does not replace
            else:
                os.replace(staged[path], path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return paths
