"""The gate grammar: one line of a run file, `METRIC OP VALUE`, parsed into a Gate.

A gate is e.g. `exact_match >= 0.8` or `perplexity_general <= base * 1.1`, where `base` is the
base model's score on the same metric, so a gate can say "no worse than what we started from".
The parser is a small regex, never eval(): gate text comes from a user's file.  It lives in
config so that loading a run file checks `eval.gates` without importing evaluate/, which checks
parsed gates against scores and saves the results (evaluate/gates.py; tests/evaluate/test_gates.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneforge.errors import ConfigError

OPS = (">=", "<=", ">", "<", "==")
SHAPE = (
    "expected METRIC OP VALUE with OP one of >=, <=, >, <, ==; "
    "VALUE a number or base, base * K, K * base, base + K, base - K"
)
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(rf"[+-]?{_NUM}")
_BASE_OP_K = re.compile(rf"base\s*([*+-])\s*({_NUM})")
_K_TIMES_BASE = re.compile(rf"({_NUM})\s*\*\s*base")
_OP_CHARS = re.compile(r"[<>=!]+")


@dataclass(frozen=True)
class Gate:
    """One parsed gate: threshold = offset, or base * base_factor + offset when base-relative."""

    text: str
    metric: str
    op: str
    base_factor: float | None  # None: an absolute threshold
    offset: float

    @property
    def relative(self) -> bool:
        return self.base_factor is not None

    def threshold(self, base_value: float | None) -> float | None:
        """The number to compare with; None for a relative gate without a base value."""
        if self.base_factor is None:
            return self.offset
        if base_value is None:
            return None
        return base_value * self.base_factor + self.offset


def parse_gate(text: str, where: str = "") -> Gate:
    """Parses `METRIC OP VALUE`; a ConfigError quotes the text, names the problem and the shape."""

    def fail(problem: str) -> ConfigError:
        label = f'{where} "{text}"' if where else f'gate "{text}"'
        return ConfigError(f"{label}: {problem}; {SHAPE}")

    if not isinstance(text, str):
        raise fail(f"a gate must be a string, not {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise fail("the gate is empty")
    ops = _OP_CHARS.findall(stripped)
    if not ops:
        raise fail("no comparison operator")
    if len(ops) > 1:
        raise fail("more than one comparison")
    op = ops[0]
    if op not in OPS:
        raise fail(f'unknown operator "{op}"')
    left, right = (side.strip() for side in stripped.split(op))
    if not left:
        raise fail(f"no metric name before {op}")
    if not _METRIC.fullmatch(left):
        raise fail(f'"{left}" is not a metric name (letters, digits, _ and ., starting with a letter or _)')
    if not right:
        raise fail(f"no value after {op}")
    value = _parse_value(right)
    if value is None:
        raise fail(f'"{right}" is not a value')
    factor, offset = value
    return Gate(stripped, left, op, factor, offset)


def _parse_value(text: str) -> tuple[float | None, float] | None:
    """(base_factor, offset) for the right-hand side, or None when it has none of the shapes."""
    if _NUMBER.fullmatch(text):
        return None, float(text)
    if text == "base":
        return 1.0, 0.0
    if match := _BASE_OP_K.fullmatch(text):
        sign, k = match.group(1), float(match.group(2))
        return (k, 0.0) if sign == "*" else (1.0, k if sign == "+" else -k)
    if match := _K_TIMES_BASE.fullmatch(text):
        return float(match.group(1)), 0.0
    return None


def parse_gates(texts: list[str], where: str = "eval.gates") -> list[Gate]:
    """Parses a config's gate list; errors are labelled `eval.gates[i]`."""
    return [parse_gate(text, f"{where}[{i}]") for i, text in enumerate(texts)]
