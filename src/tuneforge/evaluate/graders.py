"""Declarative graders in the shapes of OpenAI's graders: each scores one answer (`sample`) to one dataset
row (`item`) as a float.

Semantics follow OpenAI's grader documentation: string_check gives 1.0 or 0.0 (eq, ne; like: the
reference is contained in the input; ilike: the same ignoring case); text_similarity gives the chosen
metric in [0, 1] (or 1.0/0.0 against pass_threshold when set); python runs `grade(sample, item)`;
score_model asks a model behind an OpenAI-compatible endpoint (e.g. `tuneforge serve`) with a rubric
and parses the number it answers, clamped to `range`; multi evaluates `calculate_output` over its
named graders' scores (+ - * / **, min, max, abs, sqrt, log, exp, floor, ceil; no other Python).
Templates are `{{ item.KEY }}` (a dataset column, dotted for nested keys) and `{{ sample.output_text }}`.
tests/evaluate/test_graders.py scores each shape.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import urllib.request
from collections.abc import Callable

from tuneforge.config.rewards import Multi, PythonGrader, ScoreModel, StringCheck, TextSimilarity
from tuneforge.errors import ConfigError
from tuneforge.evaluate.metrics import bleu, fuzzy_match, rouge_l, rouge_n

Grade = Callable[[dict, dict], float]  # (sample, item) -> score
TEMPLATE = re.compile(r"\{\{\s*(item|sample)\.([\w.]+)\s*\}\}")
FUNCTIONS = {"min": min, "max": max, "abs": abs, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
             "floor": math.floor, "ceil": math.ceil}
SIMILARITY: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "rouge_l": rouge_l,
    **{f"rouge_{n}": (lambda p, r, n=n: rouge_n(p, r, n)) for n in range(1, 6)},
}


def render(template: str, sample: dict, item: dict) -> str:
    """The template with each `{{ item.x }}` / `{{ sample.y }}` replaced by that value (a KeyError names it)."""
    def value(match: re.Match) -> str:
        node = item if match.group(1) == "item" else sample
        for part in match.group(2).split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"{{{{ {match.group(1)}.{match.group(2)} }}}}: no key {part!r}")
            node = node[part]
        return node if isinstance(node, str) else json.dumps(node)

    return TEMPLATE.sub(value, template)


def string_check(shape: StringCheck) -> Grade:
    def grade(sample: dict, item: dict) -> float:
        given, reference = render(shape.input, sample, item), render(shape.reference, sample, item)
        match shape.operation:
            case "eq":
                return float(given == reference)
            case "ne":
                return float(given != reference)
            case "like":
                return float(reference in given)
            case "ilike":
                return float(reference.lower() in given.lower())

    return grade


def text_similarity(shape: TextSimilarity) -> Grade:
    metric = SIMILARITY[shape.evaluation_metric]

    def grade(sample: dict, item: dict) -> float:
        score = metric(render(shape.input, sample, item), render(shape.reference, sample, item))
        return score if shape.pass_threshold is None else float(score >= shape.pass_threshold)

    return grade


def python_grader(shape: PythonGrader) -> Grade:
    namespace: dict = {}
    try:
        exec(compile(shape.source, f"<grader {shape.name or 'python'}>", "exec"), namespace)
    except SyntaxError as exc:
        raise ConfigError(f"python grader {shape.name or ''}: its source does not parse: {exc}") from None
    grade = namespace.get("grade")
    if not callable(grade):
        raise ConfigError(f"python grader {shape.name or ''}: its source must define grade(sample, item) -> float")
    return grade


def score_model(shape: ScoreModel, post: Callable[[str, dict, dict], dict] | None = None) -> Grade:
    """Asks the endpoint's chat completions for a score; the reply's JSON `result`/`score`, else its first number."""
    post = post or post_json
    low, high = shape.range
    headers = {"Content-Type": "application/json"}
    if shape.api_key_env and os.environ.get(shape.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[shape.api_key_env]}"

    def grade(sample: dict, item: dict) -> float:
        messages = [{"role": m["role"], "content": render(m["content"], sample, item)} for m in shape.input]
        body = {"model": shape.model, "messages": messages, **shape.sampling_params}
        reply = post(shape.base_url.rstrip("/") + "/chat/completions", body, headers)
        text = reply["choices"][0]["message"]["content"] or ""
        return min(max(parse_score(text), low), high)

    return grade


def post_json(url: str, body: dict, headers: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def parse_score(text: str) -> float:
    """The score a judge answered: `{"result": x}` or `{"score": x}` as JSON, else the first number in the text."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            for key in ("result", "score"):
                if isinstance(parsed.get(key), (int, float)):
                    return float(parsed[key])
        elif isinstance(parsed, (int, float)):
            return float(parsed)
    except ValueError:
        pass
    number = re.search(r"-?\d+(?:\.\d+)?", text)
    if number is None:
        raise ValueError(f"the judge's reply holds no score: {text[:200]!r}")
    return float(number.group())


def multi(shape: Multi) -> Grade:
    graders = {name: build_grader(inner) for name, inner in shape.graders.items()}
    formula = compile_formula(shape.calculate_output, set(graders))

    def grade(sample: dict, item: dict) -> float:
        return formula({name: float(g(sample, item)) for name, g in graders.items()})

    return grade


def compile_formula(text: str, names: set[str]) -> Callable[[dict[str, float]], float]:
    """An arithmetic formula over `names`, checked once: anything else (attributes, other calls) is refused."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"multi grader: calculate_output {text!r} does not parse: {exc.msg}") from None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Call, ast.operator,
               ast.unaryop)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ConfigError(f"multi grader: calculate_output {text!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id not in names | set(FUNCTIONS):
            raise ConfigError(f"multi grader: calculate_output names {node.id!r}, not one of its graders "
                              f"({', '.join(sorted(names))})")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ConfigError(f"multi grader: calculate_output may call only {', '.join(FUNCTIONS)}")
    code = compile(tree, "<calculate_output>", "eval")
    return lambda scores: float(eval(code, {"__builtins__": {}}, {**FUNCTIONS, **scores}))


def build_grader(shape) -> Grade:
    """The scoring function of a grader shape from the run file (config/rewards.py)."""
    match shape:
        case StringCheck():
            return string_check(shape)
        case TextSimilarity():
            return text_similarity(shape)
        case PythonGrader():
            return python_grader(shape)
        case ScoreModel():
            return score_model(shape)
        case Multi():
            return multi(shape)
    raise TypeError(f"not a grader shape: {shape!r}")
