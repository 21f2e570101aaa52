"""Gates: every accepted shape parses, every malformed one is a ConfigError quoting it, and checks fail closed."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.evaluate.gates import (
    Gate,
    GateResult,
    check_gates,
    gates_passed,
    parse_gate,
    parse_gates,
    print_gates,
    read_gates,
    write_gates,
)


@pytest.mark.parametrize(
    ("text", "metric", "op", "factor", "offset"),
    [
        ("exact_match >= 0.8", "exact_match", ">=", None, 0.8),
        ("loss <= 2", "loss", "<=", None, 2.0),
        ("f1 > 0.5", "f1", ">", None, 0.5),
        ("perplexity < 20.5", "perplexity", "<", None, 20.5),
        ("count == 3", "count", "==", None, 3.0),
        ("drift <= 1e-3", "drift", "<=", None, 1e-3),
        ("delta >= -2", "delta", ">=", None, -2.0),
        ("delta >= +2.5", "delta", ">=", None, 2.5),
        ("x >= .5", "x", ">=", None, 0.5),
        ("x >= 5.", "x", ">=", None, 5.0),
        ("x >= 2E+2", "x", ">=", None, 200.0),
        ("general.correct >= 0.9", "general.correct", ">=", None, 0.9),
        ("_private2 >= 1", "_private2", ">=", None, 1.0),
        ("f1 >= base", "f1", ">=", 1.0, 0.0),
        ("perplexity_general <= base * 1.1", "perplexity_general", "<=", 1.1, 0.0),
        ("perplexity_general <= 1.1 * base", "perplexity_general", "<=", 1.1, 0.0),
        ("f1 >= base + 0.05", "f1", ">=", 1.0, 0.05),
        ("f1 >= base - 0.05", "f1", ">=", 1.0, -0.05),
        ("f1>=base+0.05", "f1", ">=", 1.0, 0.05),
        ("f1>=base-1e-3", "f1", ">=", 1.0, -1e-3),
        ("loss<base*2", "loss", "<", 2.0, 0.0),
        ("loss<2*base", "loss", "<", 2.0, 0.0),
        ("  f1   ==   base  ", "f1", "==", 1.0, 0.0),
    ],
)
def test_every_accepted_shape_parses(text, metric, op, factor, offset):
    gate = parse_gate(text)
    assert (gate.metric, gate.op) == (metric, op)
    assert gate.base_factor == (None if factor is None else pytest.approx(factor))
    assert gate.offset == pytest.approx(offset)
    assert gate.text == text.strip()
    assert gate.relative is (factor is not None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("f1 >> 0.5", 'unknown operator ">>"'),
        ("f1 => 0.5", 'unknown operator "=>"'),
        ("f1 = 0.5", 'unknown operator "="'),
        ("f1 != 0.5", 'unknown operator "!="'),
        ("f1 0.5", "no comparison operator"),
        ("", "the gate is empty"),
        ("   ", "the gate is empty"),
        (">= 0.5", "no metric name before >="),
        ("f1 >=", "no value after >="),
        ("0.1 < f1 < 0.9", "more than one comparison"),
        ("1f >= 0.5", '"1f" is not a metric name'),
        ("exact match >= 0.5", '"exact match" is not a metric name'),
        ("f1. >= 0.5", '"f1." is not a metric name'),
        ("f-1 >= 0.5", '"f-1" is not a metric name'),
        ("f1 >= high", '"high" is not a value'),
        ("f1 >= base / 2", '"base / 2" is not a value'),
        ("f1 >= base * -2", '"base * -2" is not a value'),
        ("f1 >= 2 + base", '"2 + base" is not a value'),
        ("f1 >= base + base", '"base + base" is not a value'),
        ("f1 >= nan", '"nan" is not a value'),
        ("f1 >= inf", '"inf" is not a value'),
        ("f1 >= 0.5 0.6", '"0.5 0.6" is not a value'),
        ("f1 >= __import__('os')", "is not a value"),
        ("f1 >= Base", '"Base" is not a value'),
    ],
)
def test_each_malformed_gate_is_a_config_error_quoting_it(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_gate(text, "eval.gates[1]")
    message = str(caught.value)
    assert message.startswith(f'eval.gates[1] "{text}": ')
    assert problem in message
    assert "expected METRIC OP VALUE with OP one of >=, <=, >, <, ==" in message
    assert "base * K" in message


def test_the_exact_message_for_an_unknown_operator():
    with pytest.raises(ConfigError) as caught:
        parse_gate("f1 >> 0.5", "eval.gates[1]")
    assert str(caught.value) == (
        'eval.gates[1] "f1 >> 0.5": unknown operator ">>"; expected METRIC OP VALUE with OP one of '
        ">=, <=, >, <, ==; VALUE a number or base, base * K, K * base, base + K, base - K"
    )


def test_without_a_location_the_message_still_quotes_the_gate():
    with pytest.raises(ConfigError, match=r'^gate "f1 >> 0\.5": unknown operator'):
        parse_gate("f1 >> 0.5")


def test_a_gate_that_is_not_a_string_is_a_config_error():
    with pytest.raises(ConfigError, match="must be a string, not float"):
        parse_gate(0.5)  # type: ignore[arg-type]


def test_parse_gates_labels_each_entry_by_index():
    gates = parse_gates(["f1 >= 0.5", "loss <= base"])
    assert [g.metric for g in gates] == ["f1", "loss"]
    with pytest.raises(ConfigError, match=r'^eval\.gates\[1\] "loss <> 2"'):
        parse_gates(["f1 >= 0.5", "loss <> 2"])


def one(text: str, value: float | None, base: float | None = None, base_given: bool = True) -> GateResult:
    tuned = {} if value is None else {"m": value}
    base_scores = None if not base_given else ({} if base is None else {"m": base})
    (result,) = check_gates([parse_gate(text)], tuned, base_scores)
    return result


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        (">=", False, True, True),
        ("<=", True, True, False),
        (">", False, False, True),
        ("<", True, False, False),
        ("==", False, True, False),
    ],
)
def test_each_operator_below_at_and_above_the_threshold(op, below, equal, above):
    assert one(f"m {op} 0.8", 0.79).passed is below
    assert one(f"m {op} 0.8", 0.8).passed is equal
    assert one(f"m {op} 0.8", 0.81).passed is above


@pytest.mark.parametrize(
    ("text", "base", "threshold"),
    [
        ("m >= base", 0.55, 0.55),
        ("m <= base * 1.1", 12.0, 13.2),
        ("m <= 1.1 * base", 12.0, 13.2),
        ("m >= base + 0.05", 0.55, 0.60),
        ("m >= base - 0.05", 0.55, 0.50),
        ("m >= base * 0.5", -4.0, -2.0),
    ],
)
def test_base_relative_thresholds(text, base, threshold):
    result = one(text, 0.0, base)
    assert result.threshold == pytest.approx(threshold, rel=1e-12)
    assert parse_gate(text).threshold(base) == pytest.approx(threshold, rel=1e-12)


def test_float_rounding_in_the_threshold_does_not_fail_an_equal_score():
    assert 0.55 + 0.05 != 0.6  # the rounding this guards against
    assert one("m >= base + 0.05", 0.6, 0.55).passed
    assert not one("m > base + 0.05", 0.6, 0.55).passed
    assert one("m <= base * 1.1", 13.2, 12.0).passed


def test_reasons_read_as_one_line_each():
    assert one("m >= 0.8", 0.72).reason == "m = 0.720, needs >= 0.800: FAILED"
    assert one("m >= base + 0.05", 0.61, 0.55).reason == "m = 0.610, needs >= base 0.550 + 0.05 = 0.600: passed"
    assert one("m >= base - 0.05", 0.40, 0.55).reason == "m = 0.400, needs >= base 0.550 - 0.05 = 0.500: FAILED"
    assert one("m <= base * 1.1", 13.0, 12.0).reason == "m = 13.000, needs <= base 12.000 * 1.1 = 13.200: passed"
    assert one("m >= base", 0.5, 0.55).reason == "m = 0.500, needs >= base 0.550: FAILED"
    assert one("m < 1e-4", 5e-5).reason == "m = 5e-05, needs < 0.0001: passed"


def test_a_failing_score_that_rounds_to_the_threshold_is_shown_in_full():
    assert one("m >= 0.8", 0.7999).reason == "m = 0.7999, needs >= 0.8: FAILED"


def test_a_metric_missing_from_the_results_fails():
    result = one("m >= 0.8", None)
    assert (result.passed, result.value) == (False, None)
    assert result.reason == "m: not measured: FAILED"
    (other,) = check_gates([parse_gate("perplexity_general <= 20")], {"f1": 0.9}, None)
    assert other.reason == "perplexity_general: not measured: FAILED"
    assert not other.passed


@pytest.mark.parametrize("base_given", [False, True])
def test_a_relative_gate_without_a_base_result_fails(base_given):
    result = one("m >= base + 0.05", 0.99, None, base_given=base_given)
    assert not result.passed
    assert result.threshold is None
    assert result.reason == "m >= base + 0.05: no base-model result to compare with: FAILED"


def test_an_absolute_gate_needs_no_base_result():
    assert one("m >= 0.5", 0.9, base_given=False).passed


@pytest.mark.parametrize("op", [">=", "<=", ">", "<", "=="])
def test_a_nan_score_fails_every_operator(op):
    result = one(f"m {op} 0.5", math.nan)
    assert not result.passed
    assert result.reason == f"m = nan, needs {op} 0.500: FAILED"


@pytest.mark.parametrize("op", [">=", "<=", "=="])
def test_a_nan_base_score_fails(op):
    result = one(f"m {op} base", 0.5, math.nan)
    assert not result.passed
    assert result.reason == f"m {op} base: base-model m = nan, not a number: FAILED"


def test_an_infinite_perplexity_fails_a_finite_ceiling():
    assert not one("m <= base * 1.1", math.inf, 12.0).passed


def test_gates_passed_needs_every_gate():
    gates = parse_gates(["a >= 0.5", "b <= 2"])
    assert gates_passed(check_gates(gates, {"a": 0.6, "b": 1.0}, None))
    assert not gates_passed(check_gates(gates, {"a": 0.6, "b": 3.0}, None))
    assert not gates_passed(check_gates(gates, {"a": 0.6}, None))
    assert gates_passed([])


def test_print_gates_names_each_gate_and_colours_failures():
    results = check_gates(parse_gates(["a >= 0.5", "b <= 2"]), {"a": 0.6, "b": 3.0}, None)
    buffer = io.StringIO()
    print_gates(Console(file=buffer, force_terminal=True, color_system="standard", width=200), results)
    lines = buffer.getvalue().splitlines()
    assert "gates: 1 of 2 passed" in lines[0]
    assert "a = 0.600, needs >= 0.500: passed" in lines[1] and "\x1b[32m" in lines[1]
    assert "b = 3.000, needs <= 2.000: FAILED" in lines[2] and "\x1b[31m" in lines[2]


def test_write_and_read_round_trip(tmp_path):
    gates = parse_gates(["a >= 0.5", "b <= base * 1.1", "c >= 1", "d >= 0"])
    results = check_gates(gates, {"a": 0.6, "b": 14.0, "d": math.nan}, {"b": 12.0})
    path = tmp_path / "eval" / "gates.json"
    write_gates(path, results)
    document = read_gates(path)
    assert document["passed"] is False
    assert [g["gate"] for g in document["gates"]] == ["a >= 0.5", "b <= base * 1.1", "c >= 1", "d >= 0"]
    assert [g["passed"] for g in document["gates"]] == [True, False, False, False]
    assert [g["reason"] for g in document["gates"]] == [r.reason for r in results]
    assert document["gates"][1]["value"] == 14.0
    assert document["gates"][1]["threshold"] == pytest.approx(13.2)
    assert document["gates"][2]["value"] is None  # not measured
    assert document["gates"][3]["value"] is None  # NaN is not valid JSON
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert [p.name for p in path.parent.iterdir()] == ["gates.json"]  # no temporary file left


def test_write_replaces_an_earlier_result(tmp_path):
    path = tmp_path / "gates.json"
    gates = parse_gates(["a >= 0.5"])
    write_gates(path, check_gates(gates, {"a": 0.1}, None))
    write_gates(path, check_gates(gates, {"a": 0.9}, None))
    assert read_gates(path)["passed"] is True


def test_a_failed_write_keeps_the_earlier_result_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "gates.json"
    gates = parse_gates(["a >= 0.5"])
    write_gates(path, check_gates(gates, {"a": 0.9}, None))

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("tuneforge.evaluate.gates.os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_gates(path, check_gates(gates, {"a": 0.1}, None))
    assert read_gates(path)["passed"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["gates.json"]


def test_read_gates_without_a_file_is_none(tmp_path):
    assert read_gates(tmp_path / "gates.json") is None


@pytest.mark.parametrize("text", ["{not json", "[]", '{"passed": "yes", "gates": []}', '{"passed": true}'])
def test_a_damaged_gates_file_is_an_error_not_a_pass(tmp_path, text):
    path = tmp_path / "gates.json"
    path.write_text(text)
    with pytest.raises(TuneforgeError, match="gates.json"):
        read_gates(path)


def test_gate_is_a_frozen_value():
    gate = parse_gate("f1 >= base + 0.05")
    assert gate == Gate("f1 >= base + 0.05", "f1", ">=", 1.0, 0.05)
    with pytest.raises(AttributeError):
        gate.offset = 0.0  # type: ignore[misc]
