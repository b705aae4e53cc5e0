"""`kdzoo sweep`: start or resume a sweep (`-c FILE`), add a worker to it (`--worker`, any machine that reaches
the storage), or print its table (`--report`)."""
from __future__ import annotations

import os
import subprocess
import sys
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
    p.set_defaults(func=cmd_sweep)


def train_trial(recipe: str, overrides: list[str], folder: Path, threads=None) -> dict[str, Any]:
    from kdzoo.config import load_config
    from kdzoo.regimes import make_engine

    extra = [f"engine.threads={threads}"] if threads else []
    cfg = load_config(recipe, [*overrides, "engine.progress=false", *extra])
    resume = (folder / "config.yaml").is_file()  # a re-run trial continues its run folder
    return make_engine(cfg, folder, resume=resume, quiet=True).fit()


def cmd_sweep(args) -> int:
    from kdzoo.sweep.config import load_sweep
    from kdzoo.sweep.report import sweep_rows, write_report
    from kdzoo.sweep.study import create_study, enqueue_missing, join_study, open_storage, work

    if args.jobs < 1:
        raise ConfigError(f"--jobs: {args.jobs}; give at least 1")
    cfg = load_sweep(args.config, storage=args.storage)
    storage = open_storage(cfg)
    if args.worker or args.report:
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
            command = [sys.executable, "-m", "kdzoo.cli", "sweep", "-c", args.config, "--worker",
                       "--storage", cfg.storage_url, "--threads", str(threads)]
            workers = [subprocess.Popen(command) for _ in range(args.jobs)]
            codes = [w.wait() for w in workers]
            if any(code not in (0, 1) for code in codes):
                print(f"sweep {cfg.name}: a worker exited with {max(codes)}", file=sys.stderr)
        else:
            work(study, cfg, lambda recipe, overrides, folder: train_trial(recipe, overrides, folder, threads))
    if args.worker:
        return 0
    print(write_report(study, cfg), end="")
    _, failed = sweep_rows(study, cfg)
    return 1 if failed else 0
