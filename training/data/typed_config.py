"""Typed configuration: YAML mappings -> dataclasses, and ``KEY=VALUE`` overrides with dotted keys.

The one reader behind every settings file stylepair takes: GAN training (`training.config`), the
preprocessing presets (`training.data.preprocess`), the study (`segmentation.study.study_config`) and
the procedural synthesisers (`procedural.config`).  Every error names the source and the key path::

    configs/study/micro.yaml: train.augment.flip_prob: expected a number, got 'often'

Field types come from the dataclass annotations: bool, int (a whole float such as 2.0 is accepted),
float, str, ``X | None``, ``list[X]``, ``tuple[X, ...]``, fixed-length ``tuple[X, Y]``,
``dict[str, X]``, nested dataclasses and unions (tried in order).  A type listed in ``readers`` is
built by its reader instead (the study reads a preprocessing preset given by name that way).

Overrides (``--set`` on every command): ``a.b.c=VALUE``, VALUE read as YAML, applied to the mapping
before it is read, so an override is checked exactly like the file.  List items are addressed by
index or by their ``name`` (``arms.0.psi=0.5``, ``arms.pair.psi=0.5``).
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import yaml

Reader = Callable[[Any, str, str], Any]  # (value, where, key path) -> the built object


class ConfigError(ValueError):
    """An invalid setting: unknown key, wrong type, bad value, missing file; names source and key."""


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _fail(where: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def from_mapping(cls: type, values: Any, where: str, key: str = "",
                 readers: Mapping[type, Reader] | None = None) -> Any:
    """``cls`` built from ``values`` (a parsed YAML mapping): unknown keys, missing required fields
    and wrong types raise `ConfigError` "WHERE: KEY.PATH: problem"; fields left out keep their
    defaults; the dataclass's own ``__post_init__`` checks are reported under ``key``."""
    readers = readers or {}
    if not isinstance(values, Mapping):
        raise _fail(where, key, f"expected a mapping, got {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - set(fields))
    if unknown:
        raise _fail(where, _join(key, unknown[0]), f"unknown key (known keys: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    built = {name: read_value(value, hints[name], where, _join(key, name), readers)
             for name, value in values.items()}
    for name, spec in fields.items():
        if name not in built and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise _fail(where, _join(key, name), "missing")
    try:
        return cls(**built)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise _fail(where, key, str(err)) from None


def read_value(value: Any, hint: Any, where: str, key: str, readers: Mapping[type, Reader] | None = None) -> Any:
    """``value`` checked against (and converted to) the type ``hint``; see the module docstring."""
    readers = readers or {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for candidate in (a for a in args if a is not type(None)):
            try:
                return read_value(value, candidate, where, key, readers)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if hint in readers:
        return readers[hint](value, where, key)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where, key, readers)
    if origin in (list, tuple) or hint in (list, tuple):
        return _read_sequence(value, hint, where, key, readers)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _fail(where, key, f"expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): read_value(v, item, where, _join(key, str(k)), readers) for k, v in value.items()}
    return _read_scalar(value, hint, where, key)


def _read_sequence(value: Any, hint: Any, where: str, key: str, readers: Mapping[type, Reader]) -> Any:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if isinstance(value, str):  # "a,b" on a command line
        value = [part for part in (s.strip() for s in value.split(",")) if part]
    if not isinstance(value, (list, tuple)):
        raise _fail(where, key, f"expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _fail(where, key, f"expected a list of {len(args)} values, got {list(value)!r}")
        item_hints = list(args)
    else:
        item_hints = [args[0] if args else Any] * len(value)
    items = [read_value(v, h, where, f"{key}[{i}]", readers) for i, (v, h) in enumerate(zip(value, item_hints))]
    return tuple(items) if origin is tuple else items


def _read_scalar(value: Any, hint: Any, where: str, key: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return _fail(where, key, f"expected {expected}, got {value!r}")

    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise fail("an integer (a whole number)")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail("a string")
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise fail(hint.__name__)
    return value


def to_mapping(obj: Any) -> dict:
    """A plain nested dict of a config dataclass (tuples as lists): YAML/JSON-ready, and read back
    by `from_mapping` into an equal object."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(obj))


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The mapping a YAML file holds ({} for an empty file); `ConfigError` naming the file when it
    is missing, not YAML, or not a mapping.  ``what`` says what the file should be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings ({what}), got {type(values).__name__}")
    return values


def parse_override(text: str, where: str = "--set") -> tuple[str, Any]:
    """``"train.iterations=500"`` -> ("train.iterations", 500): the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{where}: {text!r} is not key=value (e.g. train.iterations=500)")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {text!r}: the value is not valid YAML ({exc})") from None


def set_dotted(values: dict, key: str, value: Any, where: str,
               expand: Mapping[str, Callable[[str], dict]] | None = None) -> None:
    """Set ``values[a][b][c] = value`` for the key "a.b.c" in place; missing sections are created.

    List items are addressed by index or by their ``name``.  ``expand`` turns a string that stands
    for a mapping (a preset's name) into that mapping when a key reaches inside it, e.g.
    {"preprocess": preset_values} for ``datasets.ct.preprocess.resolution=32``.
    """
    parts = key.split(".")
    node: Any = values
    for depth, part in enumerate(parts[:-1]):
        path = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, path, where)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key}: {'.'.join(parts[:depth]) or 'the value'} is "
                              f"{type(node).__name__} {node!r}, which has no keys")
        if isinstance(node.get(part), str) and expand and part in expand:
            try:
                node[part] = expand[part](node[part])
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where}: {key}: {exc}") from None
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key, where)] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        raise ConfigError(f"{where}: {key}: {'.'.join(parts[:-1])} is {type(node).__name__} {node!r}, "
                          f"which has no keys")


def apply_overrides(values: dict, overrides: Sequence[str], where: str = "--set",
                    expand: Mapping[str, Callable[[str], dict]] | None = None) -> dict:
    """A copy of ``values`` with each ``"a.b.c=VALUE"`` of ``overrides`` applied (`set_dotted`)."""
    values = copy.deepcopy(values)
    for text in overrides:
        set_dotted(values, *parse_override(text, where), where, expand)
    return values


def _list_index(items: list, part: str, key: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if part in names:
        return names.index(part)
    raise ConfigError(f"{where}: {key}: no list item {part!r} (indices 0..{len(items) - 1}, names: {names})")
