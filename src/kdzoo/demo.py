"""`kdzoo demo`: teacher, student baseline and KD student on digits, then a comparison table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdzoo.config import load_config
from kdzoo.engine.trainer import Engine
from kdzoo.errors import KdzooError


def recipes_dir() -> Path:
    """The repository's configs/ folder (the demo uses the same recipes a user would)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / "configs" / "digits" / "kd.yaml").is_file():
            return base / "configs" / "digits"
    raise KdzooError("kdzoo demo needs the repository's configs/digits recipes; run it from a kdzoo checkout")


def run_demo(out: Path, quiet: bool = False) -> list[dict]:
    recipes = recipes_dir()
    quiet_overrides = ["engine.progress=false"] if quiet else []
    rows = []
    plan = [
        ("teacher", "teacher.yaml", []),
        ("student", "student.yaml", []),
        ("student + KD", "kd.yaml", [f"teacher.checkpoint={out / 'teacher'}"]),
    ]
    for label, recipe, extra in plan:
        folder = out / recipe.removesuffix(".yaml")
        cfg = load_config(recipes / recipe, [*extra, *quiet_overrides])
        if folder.is_dir():  # the demo owns its folders: a second `make demo` trains afresh
            shutil.rmtree(folder)
        print(f"== {label}: {cfg.student.arch}, {cfg.epochs} epochs on {cfg.dataset.name} -> {folder}")
        summary = Engine(cfg, folder, quiet=quiet).fit()
        rows.append({"model": label, "arch": cfg.student.arch, "params": summary.get("student_params"),
                     "best_top1": summary["best_top1"], "best_epoch": summary["best_epoch"],
                     "last_top1": summary["last_top1"], "wall_time_s": summary["wall_time_s"]})
    table = format_table(rows)
    print()
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nsaved {out / 'results.md'}")
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | arch | params | best top-1 (epoch) | last top-1 | time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['arch']} | {r['params']:,} | {r['best_top1']:.2f} ({r['best_epoch']}) | "
                     f"{r['last_top1']:.2f} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)
