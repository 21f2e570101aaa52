"""The data report: every record that was rejected or dropped, and why, counted by reason.

With `on_invalid: error` a report with invalid records stops the run before any compute and
prints them (file:line and reason); with `skip` they are dropped, counted, and the report is
written beside the prepared data, so nothing is ever dropped silently.  Cleaning (duplicates,
length filters, PII, contamination) is counted here too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneforge.data.formats import Problem
from tuneforge.errors import DataError

SHOWN = 20


def category(reason: str) -> str:
    """A reason without its field path and quoted values, to count alike problems together."""
    text = reason.split(";")[0]
    text = re.sub(r"^(?:[\w'\[\]]+(?:\.[\w\[\]]+)*: )+(?=\S)", "", text) if not text.startswith("invalid JSON") else text
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\b\d+\b", "…", text)
    return re.sub(r"\s*\(.*\)\s*$", "", text).strip()


@dataclass
class DataReport:
    invalid: list[Problem] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)  # valid records removed by cleaning
    counts: Counter = field(default_factory=Counter)  # cleaning figures: duplicates, pii_email, ...
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    overlaps: list[dict] = field(default_factory=list)  # contamination: eval prompt ~ training prompt

    def reasons(self, problems: list[Problem]) -> Counter:
        return Counter(category(p.reason) for p in problems)

    def as_dict(self) -> dict:
        return {
            "invalid_records": len(self.invalid),
            "invalid_by_reason": dict(self.reasons(self.invalid).most_common()),
            "dropped_records": len(self.dropped),
            "dropped_by_reason": dict(self.reasons(self.dropped).most_common()),
            "cleaning": dict(sorted(self.counts.items())),
            "formats": self.formats,
            "invalid": [asdict(p) for p in self.invalid],
            "dropped": [asdict(p) for p in self.dropped],
            "contamination": self.overlaps,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False))
        tmp.replace(path)

    def invalid_summary(self) -> str:
        lines = [f"  {p.location}: {p.reason}" for p in self.invalid[:SHOWN]]
        if len(self.invalid) > SHOWN:
            lines.append(f"  ... and {len(self.invalid) - SHOWN} more")
        by_reason = ", ".join(f"{n} {reason}" for reason, n in self.reasons(self.invalid).most_common())
        return f"{len(self.invalid)} invalid record(s) ({by_reason}):\n" + "\n".join(lines)

    def enforce(self, policy: str) -> None:
        """Stop with every invalid record listed, unless the policy is to skip them."""
        if self.invalid and policy == "error":
            raise DataError(
                self.invalid_summary() + "\nfix these records, or set data.on_invalid: skip to drop them "
                "(the dropped records are then listed in the data report)"
            )
