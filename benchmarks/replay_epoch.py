"""Epoch time of KD from a replayed teacher (`teacher.cache: replay`) against the student's epoch alone.

The leaderboard's budget (resnet8 on the stratified 3,000-image Fashion-MNIST subset, 10 epochs, batch 64), run
through the CLI one process at a time: a teacher is trained briefly (its accuracy does not change a replayed
epoch's cost), one KD run records the replay cache, then for each seed the student baseline and the replaying KD
run alternate, so that both see the same machine state. Prints per-run mean epoch times (the engine's
`epoch_time_s`, evaluation excluded) and the ratio of the means; the issue's goal is 1.1x.

    python benchmarks/replay_epoch.py --out benchmarks/results/replay_epoch.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["epochs=10", "dataset.subset=3000", "dataset.subset_seed=0", "engine.eval_every=2",
          "engine.progress=false", "engine.tensorboard=false"]


def kdzoo(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("kdzoo")), *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def epoch_times(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["epoch_time_s"] for e in lines if e.get("phase") == "main" and "epoch_time_s" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_replay_epoch", help="folder for the runs (reused)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    work = ROOT / args.work
    teacher, cache = work / "teacher", work / "replay_cache"
    if not (teacher / "summary.json").is_file():
        kdzoo("train", "-c", "configs/fashion_mnist/teacher.yaml", "--out", str(teacher), "--quiet",
              "epochs=3", "dataset.subset=3000", "engine.tensorboard=false")
    replay = [f"teacher.checkpoint={teacher}", "teacher.cache=replay", f"teacher.cache_dir={cache}"]
    record = work / "record"
    if not (record / "summary.json").is_file():
        kdzoo("distill", "-c", "configs/fashion_mnist/kd.yaml", "--out", str(record), "--quiet", *BUDGET, *replay)
    rows = []
    for seed in range(args.seeds):
        runs = {"student": work / f"student-seed{seed}", "kd_replay": work / f"kd_replay-seed{seed}"}
        for name, run in runs.items():  # alternating: each pair shares the machine's state
            if not (run / "summary.json").is_file():
                recipe = "student" if name == "student" else "kd"
                extra = [] if name == "student" else replay
                kdzoo("distill" if extra else "train", "-c", f"configs/fashion_mnist/{recipe}.yaml", "--out", str(run),
                      "--quiet", *BUDGET, f"seed={seed}", *extra)
        rows.append({name: statistics.mean(epoch_times(run)) for name, run in runs.items()})
    student = statistics.mean(r["student"] for r in rows)
    replayed = statistics.mean(r["kd_replay"] for r in rows)
    lines = [
        "Command: `python benchmarks/replay_epoch.py" + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"resnet8 on 3,000 Fashion-MNIST images, 10 epochs, batch 64, one run at a time; {os.cpu_count()} CPU "
        f"threads of {_cpu()}; {time.strftime('%Y-%m-%d')}. Mean epoch time (evaluation excluded) per run.",
        "",
        "| seed | student epoch s | KD from the replay cache, epoch s | ratio |",
        "|---|---|---|---|",
        *[f"| {k} | {r['student']:.2f} | {r['kd_replay']:.2f} | {r['kd_replay'] / r['student']:.2f}x |"
          for k, r in enumerate(rows)],
        f"| mean | {student:.2f} | {replayed:.2f} | {replayed / student:.2f}x |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _cpu() -> str:
    from kdzoo.engine.run_dir import cpu_model

    return cpu_model() or "an unnamed CPU"


if __name__ == "__main__":
    main()
