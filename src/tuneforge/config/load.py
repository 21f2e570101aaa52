"""Loading a run file: read the YAML, apply `--set` overrides, validate, and say exactly where it is wrong.

Every failure is a ConfigError naming the file (or `--set`), the line, the dotted key and, for an
unknown key, the closest valid one (tests/test_config.py).  `dump_config` writes the resolved
config back as YAML, every default filled in.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config.schema import RunConfig
from tuneforge.errors import ConfigError


def load_config(path: Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run file; every failure is a ConfigError naming the spot."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    overridden: set[tuple[str, ...]] = set()
    for item in overrides:
        keys = apply_override(raw, item)
        overridden.add(keys)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, path, text, overridden)) from None


def apply_override(raw: dict, item: str) -> tuple[str, ...]:
    """Apply one `a.b=value` (value parsed as YAML, so numbers and lists keep their type)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    keys = tuple(key.strip().split("."))
    node = raw
    for part in keys[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return keys


def describe_errors(exc: ValidationError, path: Path, text: str, overridden: set[tuple[str, ...]]) -> str:
    lines = [f"{path}: invalid config ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''})"]
    for error in exc.errors():
        cross_field = not error["loc"]  # a check across sections; its message starts with the key it is about
        if cross_field:
            key, _, rest = error["msg"].removeprefix("Value error, ").partition(" ")
            error = {**error, "loc": tuple(key.split(".")), "msg": rest}
        loc = tuple(str(part) for part in error["loc"])
        dotted = ".".join(loc) or "(top level)"
        if any(loc[: len(keys)] == keys for keys in overridden):
            where = "--set"
        else:
            line = yaml_line(text, error["loc"])
            where = f"{path}:{line}" if line else str(path)
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
            valid = valid_keys(error["loc"][:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            message += f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(valid)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] not in ("missing",) and "input" in error and not cross_field:
                message += f" (got {error['input']!r})"
        lines.append(f"  {where}: {dotted}: {message}")
    return "\n".join(lines)


def valid_keys(loc: tuple) -> list[str]:
    """The field names of the section at `loc`, for 'did you mean' suggestions."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the deepest key of `loc` present in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML: every default filled in, every path absolute."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
