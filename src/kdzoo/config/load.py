"""Read a YAML recipe, apply dotted `a.b=c` overrides, validate into a `Config`."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from kdzoo.config.schema import Config
from kdzoo.config.subset_keys import subset_block, subset_override
from kdzoo.config.validate import from_dict, to_dict
from kdzoo.errors import ConfigError
from kdzoo.plugins import import_modules


def read_yaml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """The mapping a YAML file holds; `what` names the file in errors (recipe, sweep file, bench file)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the recipe ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text YAML file (byte 0x{raw[err.start]:02x} at offset {err.start} "
                          "is not UTF-8)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text YAML file (it holds NUL bytes)")
    try:
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as err:  # control characters: a binary file that happens to be UTF-8
        raise ConfigError(f"{path}: not a text YAML file (character {err.character!r} at offset "
                          f"{err.position})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: malformed YAML ({problem})") from None
    if data is None or data == {}:  # all defaults: a 240-epoch run nobody asked for
        raise ConfigError(f"{what} {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys, got {type(data).__name__}")
    return data


# Sections keyed by a method instance, whose names may hold a dot ("weak.crd"): the parts of an override after
# the section name the instance, except the last `n` (a parameter of methods.<instance>)
INSTANCE_SECTIONS = {"loss": 0, "methods": 1}


def instance_path(parts: list[str], data: dict[str, Any]) -> list[str]:
    """`methods.weak.crd.nce_k` -> [methods, weak.crd, nce_k]: the instance as one key (an existing key first)."""
    if len(parts) < 3 or parts[0] not in INSTANCE_SECTIONS:
        return parts
    section = data.get(parts[0]) if isinstance(data.get(parts[0]), dict) else {}
    for stop in range(len(parts), 2, -1):  # the longest dotted name the section already holds
        if ".".join(parts[1:stop]) in section:
            return [parts[0], ".".join(parts[1:stop]), *parts[stop:]]
    if parts[1] in section:  # an undotted instance the section holds (its parameter may be a mapping)
        return parts
    stop = len(parts) - INSTANCE_SECTIONS[parts[0]]
    return [parts[0], ".".join(parts[1:stop]), *parts[stop:]] if stop > 2 else parts


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`optim.lr=0.01 seed=3 loss.kd=0.9`: values are parsed as YAML scalars/lists."""
    data = copy.deepcopy(data)
    if "dataset" in data:
        data["dataset"] = subset_block(data["dataset"])
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=0.01)")
        for key, raw in subset_override(key, raw):
            _apply_override(data, item, key, raw)
    return data


def _apply_override(data: dict[str, Any], item: str, key: str, raw: str) -> None:
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    node = data
    parts = instance_path(key.split("."), data)
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    data = _student_alias(read_yaml(path) if path is not None else {})
    overrides = ["student" + o[len("model"):] if o.startswith(("model.", "model=")) else o for o in overrides]
    return config_from_data(apply_overrides(data, overrides))


# Keys earlier versions wrote into every run folder's config.yaml, never used: dropped (regime_args when it
# holds its only value, {}; engine.wandb whatever it says: no logger ever read it; the parameter sections of
# regimes, with their defaults, that every run's config.yaml held until regimes owned them), so those folders
# resume.
_ANY = object()
_RETIRED = {("regime_args",): {}, ("engine", "wandb"): _ANY, ("peers",): [],
            ("double_student",): {"ema_decay": 0.99, "ema_buffers": "ema", "head": True, "mean_student": False,
                                  "mean_decay": 0.99},
            ("self_supervised",): {"ema_decay": 0.999, "dim": 128, "weak": None}}


def config_from_data(data: dict[str, Any]) -> Config:
    """The validated recipe; the plugins it names under `imports:` are imported (kdzoo.plugins)."""
    config = from_dict(Config, drop_retired(_student_alias(data)))
    import_modules(config.imports)
    return config


def regime_section(data: dict[str, Any]) -> dict[str, Any]:
    """The section named after the recipe's regime (`double_student: {...}`) as `regime_params`; `peers:`, which
    recipes give at the top, joins it."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    regime = data.get("regime", Config.__dataclass_fields__["regime"].default)
    params = dict(data.pop("regime_params", None) or {})
    if isinstance(regime, str) and isinstance(data.get(regime), dict):
        params.update(data.pop(regime))
    if data.get("peers"):
        params["peers"] = data.pop("peers")
    if params:
        data["regime_params"] = params
    return data


def drop_retired(data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        return data
    data = regime_section(data)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if "dataset" in data:
        data["dataset"] = subset_block(data["dataset"])
    for path, unused in _RETIRED.items():
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and (unused is _ANY or parent[path[-1]] == unused):
            del parent[path[-1]]
    return data


def _student_alias(data: dict[str, Any]) -> dict[str, Any]:
    """`model:` names the trained network in plain training recipes; it is stored as `student`."""
    if "model" not in data:
        return data
    if "student" in data:
        raise ConfigError("model: give either model or student, not both")
    return {("student" if k == "model" else k): v for k, v in data.items()}


def config_to_yaml(config: Config) -> str:
    """The recipe as a run folder keeps it: the regime's parameters as the section named after it."""
    data, out = to_dict(config), {}
    params = data.pop("regime_params")
    for key, value in data.items():
        out[key] = value
        if key == "regime" and params:
            out[config.regime] = params
    return yaml.safe_dump(out, sort_keys=False)
