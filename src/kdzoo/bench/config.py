"""The leaderboard recipe: which rows (method recipes) x student archs x seeds, at which budget."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdzoo.config.load import read_yaml
from kdzoo.config.schema import SEED
from kdzoo.config.validate import from_dict


@dataclass
class RowConfig:
    """One leaderboard row: a recipe (by name in `recipes_dir`, or a path) plus row-specific overrides."""

    name: str
    recipe: str | None = None  # default: the row name
    overrides: dict[str, Any] = field(default_factory=dict)
    # the row's teacher: null = the bench teacher; "none" = no teacher (e.g. mutual peers); a recipe name = that
    # teacher (e.g. an _aux one), trained once into <out>/teachers/<name> with `teacher_overrides`
    teacher: str | None = None
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student_suffix: str = ""  # appended to each student arch (e.g. "_aux")


@dataclass
class BenchConfig:
    name: str
    out: str  # the bench folder: teacher, runs, results.json, leaderboard.md
    recipes_dir: str
    teacher: str  # recipe of the teacher, trained once into <out>/teacher
    baseline: str  # recipe of the student baseline (labels only)
    rows: list[str | RowConfig]
    students: list[str]
    seeds: list[int] = field(metadata={"each": SEED})
    overrides: dict[str, Any] = field(default_factory=dict)  # the budget, applied to every student run
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def load_bench_config(path: str | Path, overrides: list[str] = ()) -> BenchConfig:
    from kdzoo.config.load import apply_overrides

    data = apply_overrides(read_yaml(path, "bench file"), overrides)
    cfg = from_dict(BenchConfig, data)
    cfg.rows = [RowConfig(name=r) if isinstance(r, str) else r for r in cfg.rows]
    return cfg


def dotted(mapping: dict[str, Any]) -> list[str]:
    """{"dataset.subset.size": 3000, "engine": {"progress": False}}
    -> ["dataset.subset.size=3000", "engine.progress=false"]

    Values are written as JSON, which the override parser reads back as YAML."""
    out = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            out.append(f"{prefix}={json.dumps(value)}")

    walk("", mapping)
    return out
