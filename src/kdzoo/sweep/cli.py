"""`kdzoo sweep`: start or resume a sweep (`-c FILE`), add a worker to it (`--worker`, any machine that reaches
the storage), or print its table (`--report`)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kdzoo.errors import ConfigError


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="grid x seeds over a recipe (Optuna, resumable, several workers)")
    p.add_argument("-c", "--config", required=True, help="sweep file, e.g. configs/cifar100/ckd/sweeps/ckd.yaml")
    p.add_argument("--storage", help="SQLAlchemy URL shared by the workers (default: SQLite in the sweep folder)")
    p.add_argument("--worker", action="store_true", help="join a started sweep and run its waiting trials")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes")
    p.add_argument("--report", action="store_true", help="print the table, train nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / jobs)")
    p.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker: its parent speaks
    p.set_defaults(func=cmd_sweep)


def train_trial(recipe: str, overrides: list[str], folder: Path, threads=None) -> dict[str, Any]:
    from kdzoo.config import load_config
    from kdzoo.engine.trainer import make_engine

    extra = [f"engine.threads={threads}"] if threads else []
    cfg = load_config(recipe, [*overrides, "engine.progress=false", *extra])
    resume = (folder / "config.yaml").is_file()  # a re-run trial continues its run folder
    return make_engine(cfg, folder, resume=resume, quiet=True).fit()


def cmd_sweep(args) -> int:
    """Ctrl-C or SIGTERM stops the sweep like a run (its trial failed, its run folder resumable): running the
    same command again continues it."""
    from kdzoo.engine.signals import stop_on_sigterm

    try:
        with stop_on_sigterm():
            return _sweep(args)
    except KeyboardInterrupt as stop:
        by_sigterm = bool(stop.args) and stop.args[0] == "SIGTERM"
        if args.spawned:
            return 143 if by_sigterm else 130
        raise KeyboardInterrupt("SIGTERM" if by_sigterm else None,
                                f"run `kdzoo sweep -c {args.config}` again to continue") from None


def _sweep(args) -> int:
    from kdzoo.sweep.config import load_sweep
    from kdzoo.sweep.report import sweep_rows, write_report
    from kdzoo.sweep.storage import open_storage, storage_errors
    from kdzoo.sweep.study import create_study, enqueue_missing, join_study, work

    if args.jobs < 1:
        raise ConfigError(f"--jobs: {args.jobs}; give at least 1")
    cfg = load_sweep(args.config, storage=args.storage)
    joining = args.worker or args.report
    storage = open_storage(cfg, create=not joining)
    with storage_errors(cfg):
        if joining:
            study = join_study(cfg, storage)
        else:
            study = create_study(cfg, storage)
            added = enqueue_missing(study, cfg)
            total = len(cfg.trials())
            print(f"sweep {cfg.name}: {total} trials ({len(cfg.points())} grid points x {len(cfg.seeds)} seeds), "
                  f"{added} to run; storage {cfg.storage_url if not cfg.storage else 'as given'}")
        if not args.report:
            threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
            if args.jobs > 1 and not args.worker:
                command = [sys.executable, "-m", "kdzoo.cli", "sweep", "-c", args.config, "--worker", "--spawned",
                           "--storage", cfg.storage_url, "--threads", str(threads)]
                codes = _run_workers(command, args.jobs)
                if any(code not in (0, 1) for code in codes):
                    print(f"sweep {cfg.name}: a worker exited with {max(codes)}", file=sys.stderr)
            else:
                work(study, cfg, lambda recipe, overrides, folder: train_trial(recipe, overrides, folder, threads))
        if args.worker:
            return 0
        print(write_report(study, cfg), end="")
        _, failed = sweep_rows(study, cfg)
    return 1 if failed else 0


def _run_workers(command: list[str], jobs: int) -> list[int]:
    """`jobs` worker processes; stopped, they stop too: each fails its trial cleanly at SIGTERM."""
    workers = [subprocess.Popen(command) for _ in range(jobs)]
    try:
        return [w.wait() for w in workers]
    except KeyboardInterrupt as stop:
        if not (stop.args and stop.args[0] == "SIGTERM"):  # Ctrl-C reached them too (the terminal's group)
            _wait_all(workers, 10)
        for w in workers:
            if w.poll() is None:
                w.terminate()
        if _wait_all(workers, 60):
            for w in workers:
                w.kill()
        raise


def _wait_all(workers, seconds: float) -> bool:
    """Wait up to `seconds` for every worker to exit; True when some still run."""
    deadline = time.monotonic() + seconds
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return True
    return False
