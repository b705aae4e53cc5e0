"""`kdzoo bench`: teacher once, then baseline and method rows x students x seeds; resumable cell by cell."""
from __future__ import annotations

import json
import shutil
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kdzoo.bench.config import BenchConfig, RowConfig, dotted
from kdzoo.bench.leaderboard import write_leaderboard
from kdzoo.config import Config, load_config, to_dict
from kdzoo.engine.checkpoint import CHECKPOINT_DIR
from kdzoo.engine.trainer import Engine
from kdzoo.errors import KdzooError

BASELINE = "student"
QUIET = {"engine.progress": False}


@dataclass
class Cell:
    row: str
    student: str
    seed: int
    recipe: Path
    overrides: list[str]

    @property
    def key(self) -> str:
        return f"{self.row}/{self.student}/seed{self.seed}"


class Bench:
    def __init__(self, cfg: BenchConfig, root: Path = Path("."), log: Callable[[str], None] = print):
        self.cfg = cfg
        self.root = root
        self.out = root / cfg.out
        self.log = log
        self.command: Optional[str] = None  # the command line, shown in the leaderboard

    # ------------------------------------------------------------------------------------------------------
    def recipe_path(self, name: str) -> Path:
        path = Path(name)
        if path.suffix != ".yaml":
            path = Path(self.cfg.recipes_dir) / f"{name}.yaml"
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise KdzooError(f"bench: recipe not found: {path}")
        return path

    def teacher_dir(self) -> Path:
        return self.out / "teacher"

    def cells(self) -> list[Cell]:
        rows = [RowConfig(name=BASELINE, recipe=self.cfg.baseline)] + list(self.cfg.rows)
        budget = dotted(self.cfg.overrides) + dotted(QUIET)
        cells = []
        for row in rows:
            recipe = self.recipe_path(row.recipe or row.name)
            for student in self.cfg.students:
                for seed in self.cfg.seeds:
                    overrides = budget + dotted(row.overrides) + [f"student.arch={student}", f"seed={seed}",
                                                                 f"name={row.name}"]
                    if row.name != BASELINE:
                        overrides.append(f"teacher.checkpoint={self.teacher_dir()}")
                    cells.append(Cell(row.name, student, seed, recipe, overrides))
        return cells

    def run_dir(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.row / cell.student / f"seed{cell.seed}"

    # ------------------------------------------------------------------------------------------------------
    def pending(self, only: Optional[set[str]] = None) -> list[Cell]:
        """Cells still to run (finished ones, with a summary.json, are skipped: resumable per cell)."""
        return [c for c in self.cells() if (not only or c.row in only)
                and not (self.run_dir(c) / "summary.json").is_file()]

    def run(self, only: Optional[set[str]] = None, jobs: int = 1) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.ensure_teacher()
        todo = self.pending(only)
        if jobs <= 1:
            for k, cell in enumerate(todo, 1):
                self.log(f"[{k}/{len(todo)}] {cell.key}")
                self.run_cell(cell, self.run_dir(cell))
        else:
            self._run_parallel(todo, jobs)
        results = self.collect()
        write_leaderboard(self, results)
        return results

    def _run_parallel(self, todo: list[Cell], jobs: int) -> None:
        """Cells in `jobs` processes, each with its share of the CPU threads (small nets scale poorly)."""
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_run_cell_in_process, self.cfg, str(self.root), cell, threads): cell
                       for cell in todo}
            for k, future in enumerate(as_completed(futures), 1):
                self.log(f"[{k}/{len(todo)}] {futures[future].key}: {future.result()}")

    def ensure_teacher(self) -> None:
        folder = self.teacher_dir()
        cfg = load_config(self.recipe_path(self.cfg.teacher), dotted(self.cfg.teacher_overrides) + dotted(QUIET))
        if (folder / "summary.json").is_file():
            saved = load_config(folder / "config.yaml")
            if _comparable(saved) != _comparable(cfg):
                raise KdzooError(f"bench: {folder} holds a teacher from another recipe; move it away to retrain")
            return
        self.log(f"training the teacher ({cfg.student.arch}, {cfg.epochs} epochs) -> {folder}")
        resume = (folder / CHECKPOINT_DIR / "last.state.pt").is_file()
        Engine(cfg, folder, resume=resume, quiet=True, log=self.log).fit()

    def run_cell(self, cell: Cell, folder: Path) -> str:
        cfg = load_config(cell.recipe, cell.overrides)
        resume = (folder / CHECKPOINT_DIR / "last.state.pt").is_file()
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # started but never checkpointed: start again
        started = time.time()
        try:
            summary = Engine(cfg, folder, resume=resume, quiet=True, log=lambda _: None).fit()
        except KdzooError as err:  # a failing cell is recorded and the grid goes on
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "failed.txt").write_text(f"{err}\n{traceback.format_exc()}")
            message = f"failed: {err}"
        else:
            message = (f"best {summary['best_top1']:.2f}  last {summary['last_top1']:.2f}  "
                       f"{time.time() - started:.0f}s")
        self.log(f"  {message}")
        return message

    # ------------------------------------------------------------------------------------------------------
    def collect(self) -> list[dict[str, Any]]:
        """results.json: one entry per finished cell, with its resolved config."""
        results = []
        for cell in self.cells():
            folder = self.run_dir(cell)
            summary_path = folder / "summary.json"
            if not summary_path.is_file():
                continue
            summary = json.loads(summary_path.read_text())
            epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            main = [e for e in epochs if e.get("phase") == "main"]
            results.append({
                "row": cell.row, "student": cell.student, "seed": cell.seed,
                "best_top1": summary["best_top1"], "best_epoch": summary["best_epoch"],
                "last_top1": summary["last_top1"], "wall_time_s": summary["wall_time_s"],
                "precision": summary.get("precision"),
                "epoch_time_s": statistics.mean(e["epoch_time_s"] for e in main) if main else None,
                "run_dir": str(folder.relative_to(self.out)),
                "config": to_dict(load_config(folder / "config.yaml")),
            })
        (self.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return results

    def teacher_summary(self) -> dict[str, Any]:
        path = self.teacher_dir() / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def _comparable(cfg: Config) -> dict[str, Any]:
    """A recipe without the settings that do not change results (progress bars, logging)."""
    data = to_dict(cfg)
    for key in ("progress", "tensorboard", "wandb", "log_every"):
        data["engine"].pop(key, None)
    return data


def _run_cell_in_process(cfg: BenchConfig, root: str, cell: Cell, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    bench = Bench(cfg, Path(root), log=lambda _: None)
    return bench.run_cell(cell, bench.run_dir(cell))
