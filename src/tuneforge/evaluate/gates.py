"""Gates: the thresholds a fine-tune must meet before it may ship, checked and saved.

A gate is one line of config, `METRIC OP VALUE`, e.g. `exact_match >= 0.8` or
`perplexity_general <= base * 1.1`, where `base` is the base model's score on the same
metric, so a gate can say "no worse than what we started from".  The grammar (Gate, parse_gate)
lives in config/gates.py, so that loading a run file checks its gates; this module checks and saves.

A gate fails unless it is shown to pass: a metric missing from the results, a NaN score,
or a base-relative gate with no base-model score to compare with all fail, each with a
reason that says so.  Values within a relative 1e-9 of the threshold count as equal, so
float rounding in `base + 0.05` (0.55 + 0.05 = 0.6000000000000001) cannot flip a gate;
`>=`, `<=` and `==` pass at equality, `>` and `<` fail.

`tuneforge eval` writes the results to RUN/eval/gates.json (atomically) and exits non-zero
when any gate failed; deployment reads that file back and refuses a failed model unless forced.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tuneforge.config.gates import OPS, SHAPE, Gate, parse_gate, parse_gates  # the grammar; re-exported here
from tuneforge.errors import TuneforgeError

_REL_TOL, _ABS_TOL = 1e-9, 1e-12


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None  # the fine-tune's score; None when not measured
    threshold: float | None  # None when it could not be computed (no base result)
    passed: bool
    reason: str  # one line, e.g. "exact_match = 0.720, needs >= 0.800: FAILED"


def check_gates(gates: list[Gate], tuned: dict[str, float], base: dict[str, float] | None) -> list[GateResult]:
    """Checks each gate against the fine-tune's scores (and the base model's, for relative gates)."""
    return [_check(gate, tuned, base) for gate in gates]


def _check(gate: Gate, tuned: dict[str, float], base: dict[str, float] | None) -> GateResult:
    raw_value = tuned.get(gate.metric)
    value = None if raw_value is None else float(raw_value)
    raw_base = None if base is None else base.get(gate.metric)
    base_value = None if raw_base is None else float(raw_base)
    threshold = gate.threshold(base_value)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate, value, threshold, passed, f"{reason}: {'passed' if passed else 'FAILED'}")

    if value is None:
        return result(False, f"{gate.metric}: not measured")
    if gate.relative and base_value is None:
        return result(False, f"{gate.text}: no base-model result to compare with")
    if base_value is not None and math.isnan(base_value) and gate.relative:
        return result(False, f"{gate.text}: base-model {gate.metric} = nan, not a number")
    assert threshold is not None
    shown_value, shown_threshold = _show_pair(value, threshold)
    if gate.relative:
        needs = f"base {_show(base_value)}{_show_k(gate)}"
        if _show_k(gate):
            needs += f" = {shown_threshold}"
    else:
        needs = shown_threshold
    reason = f"{gate.metric} = {shown_value}, needs {gate.op} {needs}"
    if math.isnan(value) or math.isnan(threshold):
        return result(False, reason)
    return result(_holds(value, gate.op, threshold), reason)


def _holds(value: float, op: str, threshold: float) -> bool:
    equal = math.isclose(value, threshold, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    if op == "==":
        return equal
    if op == ">=":
        return equal or value > threshold
    if op == "<=":
        return equal or value < threshold
    if op == ">":
        return not equal and value > threshold
    return not equal and value < threshold  # "<"


def _show(x: float | None) -> str:
    """Three decimals for ordinary scores (0.720, 13.204), three significant digits otherwise."""
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e6 else f"{x:.3g}"


def _show_pair(value: float, threshold: float) -> tuple[str, str]:
    """Full precision when rounding would print a failing 0.7999 as the 0.800 it needs."""
    shown = _show(value), _show(threshold)
    if shown[0] == shown[1] and not math.isclose(value, threshold, rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
        return repr(value), repr(threshold)
    return shown


def _show_k(gate: Gate) -> str:
    """The constant as the user wrote it: " * 1.1", " + 0.05", " - 0.05", or "" for plain base."""
    if gate.base_factor is not None and gate.base_factor != 1.0:
        return f" * {gate.base_factor:g}"
    if gate.offset > 0:
        return f" + {gate.offset:g}"
    if gate.offset < 0:
        return f" - {-gate.offset:g}"
    return ""


def gates_passed(results: list[GateResult]) -> bool:
    """True when every gate passed; no gates declared means nothing to fail."""
    return all(r.passed for r in results)


def print_gates(console: Console, results: list[GateResult]) -> None:
    """A header with the count, then one line per gate: passed in green, failed in red."""
    if not results:
        return
    passed = sum(r.passed for r in results)
    style = "bold green" if passed == len(results) else "bold red"
    console.print(f"gates: {passed} of {len(results)} passed", style=style, markup=False, highlight=False)
    for r in results:
        console.print(f"  {r.reason}", style="green" if r.passed else "red", markup=False, highlight=False)


def _json_number(x: float | None) -> float | None:
    """Strict JSON has no NaN or Infinity; such values are written as null (the reason keeps them)."""
    return x if x is not None and math.isfinite(x) else None


def write_gates(path: Path, results: list[GateResult]) -> None:
    """Writes {"passed", "gates": [...]} via a temporary file and a rename: deploy never reads half a file."""
    document = {
        "passed": gates_passed(results),
        "gates": [
            {
                "gate": r.gate.text,
                "value": _json_number(r.value),
                "threshold": _json_number(r.threshold),
                "passed": r.passed,
                "reason": r.reason,
            }
            for r in results
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_gates(path: Path) -> dict | None:
    """The saved results, or None when no gates were checked; a damaged file is an error, not a pass."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuneforgeError(f"{path}: cannot read the gate results ({exc}); run `tuneforge eval` again") from None
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("passed"), bool)
        or not isinstance(document.get("gates"), list)
    ):
        raise TuneforgeError(f'{path}: not a gate results file (needs "passed" and "gates"); run `tuneforge eval` again')
    return document
