"""Synthesiser configs: a YAML mapping (or dict) -> the synthesiser's frozen dataclass of settings.

Every field has a default; a field typed ``tuple[float, float]`` is a [low, high] range with
low <= high; each dataclass's ``check()`` states the allowed ranges.  Unknown keys and wrong types
are errors naming the file and the key (`training.data.typed_config`, the reader of every config)."""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Mapping

from procedural.base import ProceduralError
from training.data.typed_config import ConfigError, from_mapping, read_yaml_mapping


def config_from_mapping(cls: type, source: str | Path | Mapping | None) -> Any:
    """Build ``cls`` (a frozen dataclass whose every field has a default) from ``source`` (a YAML
    file, a mapping, or None for the defaults) and run its ``check(where)``."""
    try:
        if source is None:
            values, where = {}, "defaults"
        elif isinstance(source, Mapping):
            values, where = dict(source), "config"
        else:
            values, where = read_yaml_mapping(source, "synthesiser config"), str(source)
        config = from_mapping(cls, values, where)
    except ConfigError as exc:
        raise ProceduralError(str(exc)) from None
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if hints[name] == tuple[float, float]:  # a [low, high] range
            low, high = getattr(config, name)
            require(low <= high, where, name, f"range [low, high] needs low <= high, got {[low, high]}")
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
