"""How `tuneforge retrain` trains curated preference data: the pairs by DPO, or everything by KTO.

`tuneforge curate` writes approved answers and corrections as chat records (FILE.jsonl) and each
rejected answer with its correction as a preference pair (FILE.preference.jsonl).  With
`--preference dpo` (the default when a --data file holds pairs) the retrain is a `task: preference`
run on the pair files: production's weights are both the start and the reference (precomputed
log-probabilities, since with model.init_from the adapter switched off would be the original base).
With `--preference kto` every curated record becomes a rated reply, so approved answers train too:
a chat record's reply and a pair's chosen reply are desirable, a pair's rejected reply undesirable
(OUTPUT/curated.kto.jsonl).  Either way no pair is held out (curated sets are small): the candidate is
compared with production on production's held-out chat data, gated and promoted as any retrain
(tests/integration/test_production_loop.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from tuneforge.errors import ConfigError


def holds_pairs(path: str) -> bool:
    """Whether a data file's first record is a preference pair (the format is detected per file)."""
    from tuneforge.data.formats import detect
    from tuneforge.data.readers import read

    for raw in read(path):
        if isinstance(raw.value, dict):
            try:
                return detect(raw.value) == "preference"
            except ValueError:
                return False
        return False
    return False


def preference_mode(flag: str, files: list[str]) -> str:
    if flag != "auto":
        return flag
    return "dpo" if any(holds_pairs(f) for f in files) else "off"


def with_preference(raw: dict, mode: str, curated: list[str], output_dir: Path, console: Console) -> None:
    """Turn the retrain's run file (already pointed at the curated data) into a DPO or KTO run, or a chat run."""
    raw.pop("preference", None)
    raw.pop("kto", None)
    if mode == "off":
        raw["task"] = "chat"
        return
    data = raw["data"]
    pairs = [f for f in curated if holds_pairs(f)]
    others = [f for f in curated if f not in pairs]
    if mode == "dpo":
        if not pairs:
            raise ConfigError(f"--preference dpo: none of {', '.join(curated)} holds preference pairs "
                              "(tuneforge curate writes them to FILE.preference.jsonl)")
        if others:
            console.print(f"note: --preference dpo trains the pairs only; {', '.join(others)} (approved answers) are "
                          "not trained in this run (--preference kto trains both)", highlight=False)
        raw["task"], raw["preference"] = "preference", {"loss": "dpo", "reference": "precomputed"}
        data["train"] = [str(Path(f).resolve()) for f in pairs]
    else:
        raw["task"], raw["kto"] = "kto", {"reference": "precomputed"}
        data["train"] = [str(rated_file(curated, output_dir))]
    data.update(validation=[], val_split=0.0, test_split=0.0, replay=None, packing=False, format="auto")


def rated_file(curated: list[str], output_dir: Path) -> Path:
    """Every curated record as a rated reply (KTO), written to OUTPUT/curated.kto.jsonl."""
    from tuneforge.data.formats import read_records

    lines = []
    for path in curated:
        for record in read_records(path):
            if record.kind == "preference":
                prompt = record.as_dicts()
                for side, label in ((record.chosen, True), (record.rejected, False)):
                    reply = [{"role": m.role, "content": m.content} for m in side]
                    lines.append({"messages": prompt + reply, "label": label})
            elif record.kind == "chat":
                lines.append({"messages": record.as_dicts(), "label": True})
    if len({line["label"] for line in lines}) < 2:
        raise ConfigError("--preference kto needs both desirable and undesirable replies: pass the curated "
                          "preference pairs (FILE.preference.jsonl), whose rejected answers are the undesirable ones")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "curated.kto.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path
