"""Turn plain YAML data into typed dataclasses, with one-line errors naming the offending key."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

from kdzoo.errors import ConfigError


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data` (a mapping), checking keys and types recursively."""
    where = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{_join(path, str(unknown[0]))}: unknown key (known: {', '.join(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = _join(path, f.name)
            values[f.name] = value = coerce(hints[f.name], data[f.name], key)
            check_limits(value, f.metadata, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, f.name)}: required key is missing")
    return cls(**values)


LIMIT_KEYS = frozenset({"ge", "gt", "le", "lt", "each", "hint"})


def check_limits(value: Any, limits: Any, path: str) -> None:
    """The range of a field, from its metadata (see `kdzoo.config.schema`): `<path>: must be ..., got ...`."""
    if not limits or value is None:
        return
    unknown = set(limits) - LIMIT_KEYS
    if unknown:
        raise TypeError(f"unknown limit {sorted(unknown)[0]!r} in the schema at {path}")
    each = limits.get("each")
    if each and isinstance(value, list):
        for i, item in enumerate(value):
            check_limits(item, each, f"{path}[{i}]")
    elif each and isinstance(value, dict):
        for key, item in value.items():
            check_limits(item, each, _join(path, str(key)))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ge, gt, le, lt = (limits.get(k) for k in ("ge", "gt", "le", "lt"))
    if ((ge is not None and value < ge) or (gt is not None and value <= gt)
            or (le is not None and value > le) or (lt is not None and value >= lt)):
        hint = f" ({limits['hint']})" if limits.get("hint") else ""
        raise ConfigError(f"{path}: must be {_range_text(ge, gt, le, lt)}{hint}, got {value!r}")


def _range_text(ge: Any, gt: Any, le: Any, lt: Any) -> str:
    low, high = (ge if ge is not None else gt), (le if le is not None else lt)
    if low is not None and high is not None:
        return f"in {'[' if ge is not None else '('}{_bound(low)}, {_bound(high)}{']' if le is not None else ')'}"
    if low is not None:
        return f"{'>=' if ge is not None else '>'} {_bound(low)}"
    return f"{'<=' if le is not None else '<'} {_bound(high)}"


def _bound(value: Any) -> str:
    """2**63 - 1 rather than 9223372036854775807."""
    if isinstance(value, int) and value >= 2**16 and (value + 1) & value == 0:
        return f"2**{(value + 1).bit_length() - 1} - 1"
    return str(value)


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain data (for saving the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: {_describe(value)} fits none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        item = args[0] if args else Any
        return [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        val_tp = args[1] if args else Any
        return {str(k): coerce(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the float range
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {tp} at {path}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))
