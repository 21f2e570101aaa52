"""The base model's greedy answers to prompts, cached on disk, so a second run generates nothing.

Self-replay data and the base model's side of every before/after comparison are the same
thing: what the untouched model answers.  On a 2-core CPU each answer costs about half a
second, so they are generated once per (base model, decoding settings, prompt) and kept under
TUNEFORGE_HOME/answers/.  The cache file's name is a hash of the model directory's
fingerprint and the decoding settings, so a different or changed base model starts a new
file; within a file answers are keyed by prompt, so editing a prompt set regenerates exactly
the prompts that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.generate import Completion, Sampling, generate_completions
from tuneforge.paths import home

CACHE_VERSION = 1
SMALL_FILE = 1 << 20  # files up to 1 MiB (configs, tokenizers) are hashed by content


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a model directory's weights, config and tokenizer without reading gigabytes.

    Small files are hashed by content; weight files by name, size and modification time, so a
    re-downloaded or re-imported model counts as a new model (at worst, answers are regenerated).
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(path.name.encode() + b"\0")
        if stat.st_size <= SMALL_FILE:
            digest.update(path.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_path(model_dir: Path, sampling: Sampling, dtype: str) -> Path:
    """One file per (model, decoding settings, weight dtype): bf16 and fp32 greedy answers can differ."""
    key = json.dumps({"model": model_fingerprint(model_dir), "sampling": asdict(sampling), "dtype": dtype,
                      "v": CACHE_VERSION})
    return home() / "answers" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"


def read_cache(path: Path) -> dict[str, Completion]:
    cached: dict[str, Completion] = {}
    if not path.is_file():
        return cached
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            cached[entry["prompt"]] = Completion(entry["text"], entry["finished"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a damaged line costs one regenerated answer, never a failed run
    return cached


def write_cache(path: Path, entries: dict[str, Completion]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    lines = (json.dumps({"prompt": p, "text": c.text, "finished": c.finished}) for p, c in entries.items())
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def base_answers(
    model, tokenizer, model_dir: Path, prompts: list[str], sampling: Sampling
) -> tuple[list[Completion], int]:
    """(one answer per prompt, how many had to be generated); `model` must be the untouched base.

    Only greedy decoding is cached: sampled answers are meant to differ between runs.  `model`
    is None when the base is no longer in memory (a resumed full fine-tune).
    """
    if model is None:
        raise ModelError(
            f"{len(prompts)} base-model answer(s) are needed but the base model is no longer in memory "
            "(a resumed full fine-tune whose config gained replay or check prompts); restart the run with --overwrite"
        )
    if sampling.temperature > 0:
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        return generate_completions(model, tokenizer, conversations, sampling), len(prompts)
    path = cache_path(model_dir, sampling, str(next(model.parameters()).dtype))
    cached = read_cache(path)
    missing = list(dict.fromkeys(p for p in prompts if p not in cached))
    if missing:
        conversations = [[{"role": "user", "content": p}] for p in missing]
        was_training = model.training
        model.eval()
        try:
            fresh = generate_completions(model, tokenizer, conversations, sampling)
        finally:
            model.train(was_training)
        cached = {**read_cache(path), **dict(zip(missing, fresh))}  # re-read: another run may have added some
        write_cache(path, cached)
    return [cached[p] for p in prompts], len(missing)
