"""`kdzoo bench` and `kdzoo report` subcommands."""
from __future__ import annotations

from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="run a leaderboard grid (resumable) and write its tables")
    p.add_argument("-c", "--config", required=True, help="bench recipe, e.g. configs/bench/fashion_mnist.yaml")
    p.add_argument("--only", help="comma-separated rows to run (others are left as they are)")
    p.add_argument("--table-only", action="store_true", help="rewrite results.json/leaderboard.md, train nothing")
    p.add_argument("--jobs", type=int, default=1, help="cells run in this many processes at once")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the bench recipe, e.g. seeds=[0]")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="tables, plots and teacher-student CKA for run or bench folders")
    p.add_argument("runs", nargs="+", help="run folders or bench folders")
    p.add_argument("--out", default="report", help="folder for report.md and the PNG plots")
    p.add_argument("--no-cka", action="store_true", help="skip the CKA computation")
    p.set_defaults(func=cmd_report)


def cmd_bench(args) -> int:
    from kdzoo.bench.config import load_bench_config
    from kdzoo.bench.leaderboard import write_leaderboard
    from kdzoo.bench.runner import Bench

    bench = Bench(load_bench_config(args.config, args.overrides))
    bench.command = " ".join(["kdzoo bench -c", args.config, *args.overrides])
    if args.table_only:
        text = write_leaderboard(bench, bench.collect())
    else:
        bench.run(only=set(args.only.split(",")) if args.only else None, jobs=args.jobs)
        text = (bench.out / "leaderboard.md").read_text()
    print(text)
    return 0


def cmd_report(args) -> int:
    from kdzoo.bench.report import build_report

    build_report([Path(p) for p in args.runs], Path(args.out), with_cka=not args.no_cka)
    print(f"report written to {args.out}/report.md")
    return 0
