"""`kdzoo bench`: teacher once, then baseline and method rows x students x seeds; resumable cell by cell."""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdzoo.bench.collect import collect_results
from kdzoo.bench.config import BenchConfig, RowConfig, dotted
from kdzoo.bench.leaderboard import read_json, write_leaderboard
from kdzoo.bench.progress import EpochProgress, duration
from kdzoo.checkpoints.run_folder import RunFolderBusy, RunLock, clear_run
from kdzoo.config import Config, load_config, to_dict
from kdzoo.engine.resume_rules import ResumeMismatch, differences
from kdzoo.engine.signals import stop_on_sigterm
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import KdzooError

BASELINE = "student"
NO_TEACHER = "none"  # a row whose runs have no teacher (e.g. mutual peers)
QUIET = {"engine.progress": False}
LOG_FILE = "bench.log"  # in the bench folder: every line the bench prints, with a timestamp


def _print(line: str) -> None:
    print(line, flush=True)  # shows up at once when the output goes to a pipe (`| tee`) or a file


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
    def __init__(self, cfg: BenchConfig, root: Path = Path("."), log: Callable[[str], None] = _print):
        self.cfg = cfg
        self.root = root
        self.out = root / cfg.out
        self.log = log  # the terminal; `say` also appends to <out>/bench.log
        self.command: str | None = None  # the command line, shown in the leaderboard

    def say(self, line: str) -> None:
        """A progress line to the terminal and to the bench log (appended in one write: worker processes share it)."""
        self.log(line)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    # ------------------------------------------------------------------------------------------------------
    def recipe_path(self, name: str) -> Path:
        path = Path(name)
        if path.suffix != ".yaml":
            path = Path(self.cfg.recipes_dir) / f"{name}.yaml"
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise KdzooError(f"bench: recipe not found: {path}")
        return path

    def teacher_dir(self, row: RowConfig | None = None) -> Path:
        """The bench teacher's folder, or that of a row's own teacher (the bench's own recipe without overrides
        is the bench teacher)."""
        if row is not None and row.teacher not in (None, NO_TEACHER) and not (
                row.teacher == self.cfg.teacher and not row.teacher_overrides):
            return self.out / "teachers" / row.teacher
        return self.out / "teacher"

    def teachers(self, only: set[str] | None = None) -> list[tuple[str, Path, list[str]]]:
        """(label, folder, overrides) of every teacher to train: the bench's, then the rows' own (of the rows in
        `only`, when given), once each."""
        out = [("teacher", self.teacher_dir(), [self.cfg.teacher, *dotted(self.cfg.teacher_overrides)])]
        if only and not self._needs_bench_teacher(only):
            out = []  # e.g. `--only hsakd`: its teacher trains from scratch, the bench teacher's hours are not needed
        for row in self.cfg.rows:
            if row.teacher in (None, NO_TEACHER) or (only and row.name not in only):
                continue
            # its own overrides only: the bench's teacher_overrides (e.g. an arch) are for the bench teacher
            entry = (row.teacher, self.teacher_dir(row), [row.teacher, *dotted(row.teacher_overrides)])
            same = [e for e in out if e[1] == entry[1]]
            if same and same[0][2] != entry[2]:
                raise KdzooError(f"bench: rows {row.name} and another name teacher {row.teacher} with other "
                                 "teacher_overrides; give one of them another recipe (one folder per teacher)")
            if not same:
                out.append(entry)
        return out

    def _needs_bench_teacher(self, only: set[str]) -> bool:
        """Whether a row in `only` distils from the bench teacher, or has its own teacher start from it."""
        bench_teacher = self.teacher_dir().resolve()
        for row in self.cfg.rows:
            if row.name not in only or row.teacher == NO_TEACHER:
                continue
            if self.teacher_dir(row) == self.teacher_dir():
                return True
            cfg = load_config(self.recipe_path(row.teacher), dotted(row.teacher_overrides))
            starts = [cfg.student.checkpoint, cfg.teacher.checkpoint]
            if any(s and _inside((self.root / s).resolve(), bench_teacher) for s in starts):
                return True
        return False

    def cells(self) -> list[Cell]:
        rows = [RowConfig(name=BASELINE, recipe=self.cfg.baseline)] + list(self.cfg.rows)
        budget = dotted(self.cfg.overrides) + dotted(QUIET)
        cells = []
        for row in rows:
            recipe = self.recipe_path(row.recipe or row.name)
            for student in self.cfg.students:
                for seed in self.cfg.seeds:
                    overrides = budget + dotted(row.overrides) + [f"student.arch={student}{row.student_suffix}",
                                                                 f"seed={seed}", f"name={row.name}"]
                    if row.name != BASELINE and row.teacher != NO_TEACHER:
                        overrides.append(f"teacher.checkpoint={self.teacher_dir(row)}")
                    cells.append(Cell(row.name, student, seed, recipe, overrides))
        return cells

    def run_dir(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.row / cell.student / f"seed{cell.seed}"

    # ------------------------------------------------------------------------------------------------------
    def pending(self, only: set[str] | None = None) -> list[Cell]:
        """Cells still to run (finished ones, with a summary.json, are skipped: resumable per cell)."""
        return [c for c in self.cells() if (not only or c.row in only) and not self._finished(c)]

    def _finished(self, cell: Cell) -> bool:
        """Finished with the cell's current recipe (a changed budget or recipe runs the cell again)."""
        folder = self.run_dir(cell)
        if not (folder / "summary.json").is_file():
            return False
        try:
            saved = _comparable(load_config(folder / "config.yaml"))
            current = _comparable(load_config(cell.recipe, cell.overrides))
        except KdzooError:
            return False
        return not any(differences(saved, current, _comparable(Config())))

    def run(self, only: set[str] | None = None, jobs: int = 1) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        todo = self.pending(only)
        for cell in todo:  # a bad value in a cell's recipe stops the bench now, not after the teacher's hours
            try:
                load_config(cell.recipe, cell.overrides)
            except KdzooError as err:
                raise type(err)(f"bench cell {cell.key} ({cell.recipe.name}): {err}") from None
        self.say(f"bench {self.cfg.name}: {len(todo)} of {len(self.cells())} cells to run -> {self.out}")
        self.ensure_teacher(only)
        started = time.monotonic()
        if jobs <= 1:
            for k, cell in enumerate(todo, 1):
                self.say(f"[{k}/{len(todo)}] {cell.key}")
                self.run_cell(cell, self.run_dir(cell))
                self._say_grid_eta(started, k, len(todo))
        else:
            self._run_parallel(todo, jobs)
        results = self.collect()
        write_leaderboard(self, results)
        return results

    def _run_parallel(self, todo: list[Cell], jobs: int) -> None:
        """Cells in `jobs` processes, each with its share of the CPU threads (small nets scale poorly)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_run_cell_in_process, self.cfg, str(self.root), cell, threads): cell
                       for cell in todo}
            started = time.monotonic()
            try:
                with stop_on_sigterm():
                    for k, future in enumerate(as_completed(futures), 1):
                        self.say(f"[{k}/{len(todo)}] {futures[future].key}: {future.result()}")
                        self._say_grid_eta(started, k, len(todo))
            except KeyboardInterrupt:  # stop the workers' cells too: each stops cleanly at its SIGTERM, and the
                # pool, broken by their exit, runs no queued cell (cancelling futures here would race its thread)
                workers = list((getattr(pool, "_processes", None) or {}).values())
                for process in workers:
                    if process.is_alive():
                        process.terminate()
                for process in workers:
                    process.join(30)
                    if process.is_alive():
                        process.kill()
                raise

    def _say_grid_eta(self, started: float, done: int, total: int) -> None:
        if done < total:
            eta = (time.monotonic() - started) / done * (total - done)
            left = total - done
            self.say(f"  {left} cell{'s' if left > 1 else ''} left, ETA {duration(eta)}")

    def ensure_teacher(self, only: set[str] | None = None) -> None:
        """Train every teacher not yet trained (the bench's first: a row's teacher may start from it); with
        `only`, just those of these rows."""
        for label, folder, (recipe, *overrides) in self.teachers(only):
            self._ensure_one_teacher(label, folder, load_config(self.recipe_path(recipe), overrides + dotted(QUIET)))

    def _ensure_one_teacher(self, label: str, folder: Path, cfg: Config) -> None:
        if (folder / "summary.json").is_file():
            saved = load_config(folder / "config.yaml")
            if _comparable(saved) != _comparable(cfg):
                raise KdzooError(f"bench: {folder} holds a teacher from another recipe; move it away to retrain")
            return
        self.say(f"training the {label} ({cfg.student.arch}, {cfg.epochs} epochs) -> {folder}")
        resume = folder.exists()  # continues a killed teacher; one killed before its first checkpoint restarts
        progress = EpochProgress(label, self.say)
        engine = make_engine(cfg, folder, resume=resume, quiet=True, log=progress)
        progress.start()
        summary = engine.fit()
        self.say(f"{label}: best {_num(summary['best_top1'])}  last {_num(summary['last_top1'])}  "
                 f"{duration(summary['wall_time_s'])}")

    def run_cell(self, cell: Cell, folder: Path, report: bool = True) -> str:
        """Train one cell; `report=False` (a worker process) leaves the closing line to the caller. A killed
        cell continues from its checkpoint (the engine restarts one that has none, under the folder's lock);
        one whose recipe changed since its checkpoint starts again."""
        cfg = load_config(cell.recipe, cell.overrides)
        (folder / "failed.txt").unlink(missing_ok=True)
        started = time.time()
        try:
            try:
                summary = self._train_cell(cfg, cell, folder, resume=folder.exists())
            except ResumeMismatch as err:
                self.say(f"  {cell.key}: its recipe changed since its checkpoint ({err}); starting it again")
                with RunLock(folder):
                    clear_run(folder)
                summary = self._train_cell(cfg, cell, folder, resume=False)
        except RunFolderBusy as err:  # another bench trains this cell: leave it to that one
            message = f"skipped: {err}"
        except KdzooError as err:  # a failing cell is recorded and the grid goes on
            message = f"failed: {err}"
            try:
                with RunLock(folder):  # not into a folder another bench has taken over meanwhile
                    (folder / "failed.txt").write_text(f"{err}\n{traceback.format_exc()}")
            except RunFolderBusy:
                message = f"skipped: {err}"
        else:
            message = (f"best {_num(summary['best_top1'])}  last {_num(summary['last_top1'])}  "
                       f"{duration(time.time() - started)}")
        if report:
            self.say(f"  {message}")
        return message

    def _train_cell(self, cfg: Config, cell: Cell, folder: Path, resume: bool) -> dict[str, Any]:
        progress = EpochProgress(cell.key, self.say)
        engine = make_engine(cfg, folder, resume=resume, quiet=True, log=progress)
        progress.start()
        return engine.fit()

    # ------------------------------------------------------------------------------------------------------
    def collect(self) -> list[dict[str, Any]]:
        """results.json: one entry per finished cell, with its resolved config."""
        return collect_results([(cell, self.run_dir(cell)) for cell in self.cells()], self.out)

    def teacher_summary(self) -> dict[str, Any]:
        return read_json(self.teacher_dir() / "summary.json")


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or a file under it (a checkpoint named by run folder or by file)."""
    return path == folder or folder in path.parents


def _comparable(cfg: Config) -> dict[str, Any]:
    """A recipe without the settings that do not change results (progress bars, logging)."""
    data = to_dict(cfg)
    for key in ("progress", "tensorboard", "log_every"):
        data["engine"].pop(key, None)
    return data


def _run_cell_in_process(cfg: BenchConfig, root: str, cell: Cell, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    bench = Bench(cfg, Path(root))  # per-epoch lines to this process's stdout and the shared bench log
    try:
        with stop_on_sigterm():
            return bench.run_cell(cell, bench.run_dir(cell), report=False)
    except KeyboardInterrupt:  # stopped (its checkpoint is complete): never take another queued cell
        os._exit(143)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
