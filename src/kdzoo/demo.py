"""`kdzoo demo`: teacher, student baseline and KD student on digits, then a comparison table."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kdzoo.checkpoints.run_folder import RunLock, clear_run, holds_run
from kdzoo.config import load_config
from kdzoo.engine.device import cpu_has_bf16, resolve_device, resolve_precision
from kdzoo.engine.run_log import cpu_model
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import KdzooError


def recipes_dir() -> Path:
    """The repository's configs/demo folder: the demo's own, small recipes (a resnet8x4 teacher)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / "configs" / "demo" / "kd.yaml").is_file():
            return base / "configs" / "demo"
    raise KdzooError("kdzoo demo needs the repository's configs/demo recipes; run it from a kdzoo checkout")


def hardware_line(cfg) -> str:
    """One line naming the hardware and the precision the demo trains in."""
    device = resolve_device(cfg.engine.device)
    precision = resolve_precision(cfg.engine.precision, device)
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = (f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                 f"{'with' if cpu_has_bf16() else 'without'} AVX512-BF16/AMX")
    return (f"hardware: {where}; precision {precision} (engine.precision={cfg.engine.precision}), "
            f"torch {torch.__version__}")


def replace_demo_run(folder: Path) -> None:
    """A second `make demo` trains afresh: it clears its own earlier run (under the folder's lock), never
    another run that happens to live there."""
    if not holds_run(folder):
        return
    try:
        name = load_config(folder / "config.yaml").name
    except KdzooError:
        name = None
    if not (name or "").startswith("demo-"):
        raise KdzooError(f"{folder} holds a run that is not the demo's ({name or 'no readable config.yaml'}); "
                         "give the demo another --out")
    with RunLock(folder):
        clear_run(folder)


def run_demo(out: Path, quiet: bool = False, overrides: Optional[Sequence[str]] = None) -> list[dict]:
    """Train the three demo runs under `out`; `overrides` (e.g. engine.precision=fp32) apply to all three."""
    recipes = recipes_dir()
    common = [*(overrides or []), *(["engine.progress=false"] if quiet else [])]
    rows = []
    plan = [
        ("teacher", "teacher.yaml", []),
        ("student", "student.yaml", []),
        ("student + KD", "kd.yaml", [f"teacher.checkpoint={out / 'teacher'}"]),
    ]
    start = time.perf_counter()
    for i, (label, recipe, extra) in enumerate(plan):
        folder = out / recipe.removesuffix(".yaml")
        cfg = load_config(recipes / recipe, [*extra, *common])
        if i == 0:
            print(hardware_line(cfg))
        replace_demo_run(folder)
        print(f"== {label}: {cfg.student.arch}, {cfg.epochs} epochs on {cfg.dataset.name} -> {folder}")
        summary = make_engine(cfg, folder, quiet=quiet).fit()
        rows.append({"model": label, "arch": cfg.student.arch, "params": summary.get("student_params"),
                     "best_top1": summary["best_top1"], "best_epoch": summary["best_epoch"],
                     "last_top1": summary["last_top1"], "wall_time_s": summary["wall_time_s"],
                     "precision": summary.get("precision")})
    total = time.perf_counter() - start
    table = format_table(rows)
    print()
    print(table)
    print(f"\ntotal {total:.0f} s; {hardware_line(cfg)}")
    (out / "results.md").write_text(table + f"\n\ntotal {total:.0f} s; {hardware_line(cfg)}\n")
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
