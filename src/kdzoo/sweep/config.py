"""A sweep file: a grid of dotted recipe keys x seeds over a recipe, validated before anything runs.

    name: ckd-resnet32                   # the Optuna study's name
    recipe: configs/cifar100/ckd/ckd/resnet110-resnet32.yaml   # or a `recipe:` list under grid
    grid: {optim.lr: [0.1, 0.05, 0.025], methods.ckd.pos_and_neg: [2, 3]}
    seeds: [1, 2, 3]
    overrides: {epochs: 1000}            # for every trial
    out: runs/sweeps/ckd-resnet32        # run folders, the SQLite storage, the report
    storage: null                        # null: sqlite:///<out>/sweep.db; any SQLAlchemy URL (postgresql://...)
    heartbeat: {interval: 10, grace: 60} # seconds: a trial whose worker stopped beating is re-run
    retry: 600                           # seconds a worker waits for a database server that went away
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kdzoo.config import load_config
from kdzoo.config.load import read_yaml
from kdzoo.config.validate import to_dict
from kdzoo.errors import ConfigError, KdzooError

KEYS = ("name", "recipe", "grid", "seeds", "overrides", "out", "storage", "heartbeat", "retry", "description")


@dataclass
class SweepConfig:
    name: str
    recipe: Optional[str]
    grid: dict[str, list]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    out: Path = Path("runs/sweeps")
    storage: Optional[str] = None
    heartbeat: int = 10
    grace: int = 60
    retry: float = 600.0  # seconds of retries when a database server is unreachable mid-sweep

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'sweep.db').resolve()}"

    def points(self) -> list[dict[str, Any]]:
        """Every grid point (without the seed), in grid order."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's parameters: a grid point and a seed."""
        return [{**point, "seed": seed} for point in self.points() for seed in self.seeds]

    def recipe_of(self, params: dict[str, Any]) -> str:
        return params.get("recipe", self.recipe)

    def overrides_of(self, params: dict[str, Any]) -> list[str]:
        fixed = {**self.overrides, **{k: v for k, v in params.items() if k != "recipe"}}
        return [f"{k}={_yaml(v)}" for k, v in fixed.items()]


def _yaml(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load_sweep(path: str | Path, storage: Optional[str] = None) -> SweepConfig:
    data = read_yaml(path, "sweep file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, recipe, grid, seeds, ...)")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(KEYS)})")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid: a mapping of dotted recipe keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key}: an empty grid axis (give a non-empty list of values)")
        if any(not isinstance(v, (str, int, float, bool)) for v in values):
            raise ConfigError(f"{path}: grid.{key}: values must be numbers, strings or booleans")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ConfigError(f"{path}: seeds: a non-empty list of integers")
    if "seed" in grid:
        raise ConfigError(f"{path}: grid.seed: list the seeds under `seeds:`")
    if not grid and len(seeds) < 2:
        raise ConfigError(f"{path}: grid: the grid is empty (name at least one key to sweep, or several seeds)")
    name = data.get("name") or Path(path).stem
    recipe = data.get("recipe")
    if recipe is None and "recipe" not in grid:
        raise ConfigError(f"{path}: recipe: give the recipe to sweep (or a list of recipes under grid.recipe)")
    beat = data.get("heartbeat") or {}
    retry = data.get("retry", 600)
    if not isinstance(retry, (int, float)) or isinstance(retry, bool) or retry < 0:
        raise ConfigError(f"{path}: retry: seconds to wait for the storage server (a number >= 0), got {retry!r}")
    cfg = SweepConfig(name=str(name), recipe=recipe, grid=grid, seeds=seeds, overrides=data.get("overrides") or {},
                      out=Path(data.get("out") or Path("runs") / "sweeps" / str(name)),
                      storage=storage or data.get("storage"), heartbeat=int(beat.get("interval", 10)),
                      grace=int(beat.get("grace", 60)), retry=float(retry))
    check_grid(cfg, path)
    return cfg


def check_grid(cfg: SweepConfig, path) -> None:
    """Every grid key names a key of the recipe (a config field, or a parameter of a method it uses), and the
    recipe of every grid point, and of every seed, validates as `kdzoo train` checks one: values, and the names
    of models, methods, regime and dataset. All before any trial starts."""
    from kdzoo.regimes.names import check_names

    recipes = cfg.grid.get("recipe", [cfg.recipe])
    for recipe in recipes:
        if Path(recipe).is_dir():
            raise ConfigError(f"{path}: recipe {recipe} is a directory, not a recipe file")
        if not Path(recipe).is_file():
            raise ConfigError(f"{path}: recipe {recipe}: no such file")
        base = load_config(recipe, cfg.overrides_of({}))
        for key in cfg.grid:
            if key != "recipe" and not _key_exists(base, key):
                raise ConfigError(f"{path}: grid.{key}: the recipe {recipe} has no key {key}")
    points = cfg.points()
    for params in [*points, *({**points[0], "seed": seed} for seed in cfg.seeds)]:
        try:
            check_names(load_config(cfg.recipe_of(params), cfg.overrides_of(params)))
        except KdzooError as err:
            raise ConfigError(f"{path}: grid point {json.dumps(params)}: {err}") from None


def _key_exists(cfg, key: str) -> bool:
    parts = key.split(".")
    if parts[0] == "methods" and len(parts) == 3:
        from kdzoo.distillers import METHODS, method_for_term

        used = {method_for_term(term).name for term in cfg.loss}
        return (parts[1] in used and parts[1] in METHODS.names()
                and parts[2] in {f.name for f in dataclasses.fields(METHODS.get(parts[1]).Params)})
    if parts[0] == "loss" and len(parts) == 2:
        return True  # a weight of any term: validated with its value
    node: Any = to_dict(cfg)
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
