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
    def run(self, only: Optional[set[str]] = None) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.ensure_teacher()
        cells = self.cells()
        for k, cell in enumerate(cells, 1):
            if only and cell.row not in only:
                continue
            folder = self.run_dir(cell)
            if (folder / "summary.json").is_file():
                continue  # finished earlier: resumability is per cell
            self.log(f"[{k}/{len(cells)}] {cell.key}")
            self.run_cell(cell, folder)
        results = self.collect()
        write_leaderboard(self, results)
        return results

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

    def run_cell(self, cell: Cell, folder: Path) -> None:
        cfg = load_config(cell.recipe, cell.overrides)
        resume = (folder / CHECKPOINT_DIR / "last.state.pt").is_file()
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # started but never checkpointed: start again
        started = time.time()
        try:
            summary = Engine(cfg, folder, resume=resume, quiet=True, log=self.log).fit()
        except KdzooError as err:  # a failing cell is recorded and the grid goes on
            (folder / "failed.txt").parent.mkdir(parents=True, exist_ok=True)
            (folder / "failed.txt").write_text(f"{err}\n{traceback.format_exc()}")
            self.log(f"  failed: {err}")
            return
        self.log(f"  best {summary['best_top1']:.2f}  last {summary['last_top1']:.2f}  "
                 f"{time.time() - started:.0f}s")

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
