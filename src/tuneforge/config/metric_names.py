"""The generation metrics a run file may name: the built-in names, and `module:function` resolved to its function.

They live in config, below evaluate/ (which scores answers with them), so that loading a run file
checks `eval.metrics` and `eval.best_metric` without importing evaluate: the layers point down.
evaluate/metrics.py pairs each built-in name with its scorer; tests/test_config.py pins that the
two lists agree (test_builtin_metric_names_match_the_scorers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tuneforge.errors import ConfigError

BUILTIN_METRICS = ("exact_match", "contains", "token_f1", "rouge_l", "bleu")
# Names the evaluator writes beside the generation metrics; a custom metric may not take them.
RESERVED_NAMES = ("accuracy", "macro_f1", "loss", "eval_loss", "perplexity", "perplexity_general")


def reported_name(spec: str) -> str:
    """The name a metric's scores are reported under: a built-in's own, a custom metric's function name."""
    return spec if spec in BUILTIN_METRICS else spec.partition(":")[2]


def check_metric(spec: str) -> str:
    """The reported name of a metric the run file names; a ConfigError when it names none."""
    return spec if spec in BUILTIN_METRICS else custom_metric(spec)[0]


def custom_metric(spec: str) -> tuple[str, Callable[[str, str], float]]:
    """(name, function) of the custom metric `module:function`, named by its function.

    A custom metric's name is the function's, so gates and `best_metric` can say
    `keyword_hit >= 0.5`; it may therefore not reuse a built-in's name or one the evaluator
    reports (accuracy, loss, ...), whose summaries would be confused with it.
    """
    known = ", ".join(BUILTIN_METRICS)
    if ":" not in spec:
        raise ConfigError(f"unknown metric {spec!r}: use one of {known}, or module:function for your own")
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"metric {spec!r}: write a custom metric as module:function (built-in: {known})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"metric {spec!r}: cannot import module {module_name!r} ({exc})") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise ConfigError(f"metric {spec!r}: module {module_name!r} has no function {function_name!r}")
    if not callable(function):
        raise ConfigError(f"metric {spec!r}: {module_name}.{function_name} is not callable")
    if function_name in BUILTIN_METRICS + RESERVED_NAMES:
        raise ConfigError(f"metric {spec!r}: the name {function_name!r} is taken; rename the function")
    return function_name, function
