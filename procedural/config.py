"""Synthesiser configs: a YAML mapping (or dict) -> the synthesiser's frozen dataclass of settings.

Every field has a default; a field typed ``tuple[float, float]`` is a [low, high] range with
low <= high; each dataclass's ``check()`` states the allowed ranges.  Unknown keys and wrong types
are errors naming the file and the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import yaml

from procedural.base import ProceduralError


def read_mapping(source: str | Path | Mapping | None) -> tuple[dict, str]:
    """(mapping, where): a YAML file's mapping, a given mapping, or {} for None."""
    if source is None:
        return {}, "defaults"
    if isinstance(source, Mapping):
        return dict(source), "config"
    path = Path(source)
    if not path.is_file():
        raise ProceduralError(f"{path}: no such synthesiser config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProceduralError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ProceduralError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values, str(path)


def _typed(value: Any, default: Any, where: str, key: str) -> Any:
    """``value`` converted to the type of the field's default, or a `ProceduralError`."""
    def fail(expected: str) -> ProceduralError:
        return ProceduralError(f"{where}: {key}: expected {expected}, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        if isinstance(default, int) and not float(value).is_integer():
            raise fail("a whole number")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        if len(default) == 2 and all(isinstance(x, (int, float)) for x in default):  # a [low, high] range
            if len(value) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
                raise fail("a range [low, high]")
            if value[0] > value[1]:
                raise ProceduralError(f"{where}: {key}: range [low, high] needs low <= high, got {list(value)}")
            return (float(value[0]), float(value[1]))
        return tuple(value)
    return value


def config_from_mapping(cls: type, source: str | Path | Mapping | None) -> Any:
    """Build ``cls`` (a frozen dataclass whose every field has a default) from ``source`` and run its
    ``check(where)``."""
    values, where = read_mapping(source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ProceduralError(f"{where}: {unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))})")
    defaults = cls()
    typed = {key: _typed(value, getattr(defaults, key), where, key) for key, value in values.items()}
    config = dataclasses.replace(defaults, **typed)
    config.check(where)
    return config


def require(condition: bool, where: str, key: str, problem: str) -> None:
    """`ProceduralError` "WHERE: KEY: PROBLEM" unless ``condition``."""
    if not condition:
        raise ProceduralError(f"{where}: {key}: {problem}")


def require_count_range(value: tuple[float, float], where: str, key: str) -> None:
    """`ProceduralError` unless ``value`` is a [low, high] range of whole numbers >= 0 (a count)."""
    require(value[0] >= 0 and float(value[0]).is_integer() and float(value[1]).is_integer(), where, key,
            "a range of whole numbers >= 0")
