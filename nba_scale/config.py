"""Typed configs built from plain dicts (CLI `--set`, Ray Tune trial configs), with strict checking.

A trial config is a nested dict; dotted keys (`"defense.beta": 0.5`, the form Ray Tune and the
Parquet columns use) are accepted as well. Unknown keys and wrong types are rejected with a one-line
`ConfigError` naming the key, the bad value and the valid options, as nanoGPT's configurator does.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad user input: the message is one line and names the fix."""


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'c': 2} -> {'a': {'b': 1}, 'c': 2}; nested dicts pass through and merge."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r} conflicts with a plain value at {p!r}")
        if isinstance(value, dict):
            node.setdefault(parts[-1], {}).update(nest(value))
        else:
            node[parts[-1]] = value
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts; `b` wins."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs -> nested dict; values parsed as YAML scalars (1e-3, true, [1,2])."""
    flat = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set defense.beta=0.5)")
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:  # an unclosed [ or {, a YAML tag (!!python/...): plain values only
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not plain YAML ({problem}); write a number, "
                              f"true/false, a string or a list like [1, 2]") from None
    return nest(flat)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}={value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} should be a list")
        (inner,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r} should be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise ConfigError(f"{where}={value!r} should be an integer")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}={value!r} should be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} should be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} should be a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} should be a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return value


def build(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Instantiate dataclass `cls` from `data`, recursing into nested dataclass fields."""
    data = nest(dict(data or {}))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            base = dataclasses.asdict(fields[name].default_factory())  # type: ignore[misc]
            base.update(value)
            kwargs[name] = build(hints[name], base, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        try:
            check()
        except ConfigError as e:  # validate() names a bare field ("epochs=-1 ..."); say whose
            msg = str(e)
            if where and any(msg.startswith((f"{f}=", f"{f}/")) for f in fields):
                msg = f"{where}.{msg}"
            raise ConfigError(msg) from None
    return obj


def read_yaml_mapping(path, keys: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a search space, a campaign): a syntax error or another
    shape is one line naming the file (and the line), `keys` what the mapping should hold."""
    where = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {keys}")
    return doc


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def key_fields(fields: dict[str, Any], added_later: dict[str, Any]) -> dict[str, Any]:
    """`fields` as a cache key sees them: the settings in `added_later` (introduced after artifacts
    were first keyed, each with the value that reproduces the older behaviour) are left out while
    all of them hold those values, so artifacts built before they existed keep their keys."""
    if all(fields.get(k) == v for k, v in added_later.items()):
        return {k: v for k, v in fields.items() if k not in added_later}
    return fields


def finite_positive(where: str, value: float, allow_zero: bool = False) -> None:
    # NaN is let through on purpose: a NaN hyper-parameter must end the trial as `failed`
    # (the sweep records it), not be rejected before it runs.
    if math.isnan(value):
        return
    require(value > 0 or (allow_zero and value == 0), f"{where}={value} must be {'>= 0' if allow_zero else '> 0'}")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
