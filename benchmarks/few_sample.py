"""The few-sample leaderboard on Fashion-MNIST (CKD's setting): resnet8 students of the bench teacher
(runs/bench/fashion_mnist/teacher) on 1,000 and 2,000 training images (80/20 train/val), rows student, kd, ckd
(1/1 and 2/1), mixup, mixup3, dist, rkd, crd (configs/fashion_mnist/ckd/), 3 seeds, the lr swept with `kdzoo sweep`.

    python benchmarks/few_sample.py [--jobs 2] [--out runs/bench/few_sample]     (resumable: the sweeps are)

1. One sweep at 1,000 images: every row x lr {0.1, 0.05, 0.025} x seeds {0, 1, 2}.
2. At 2,000 images every row with its best lr of step 1 (highest mean validation top-1), seeds {0, 1, 2}.
3. The cached teacher's wall time against an uncached KD run of the same budget (20 epochs, constant lr).
Writes benchmarks/results/few_sample/{leaderboard.md, results.json, command.txt}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = ["student", "kd", "ckd", "ckd_21", "mixup", "mixup3", "dist", "rkd", "crd"]
LRS = [0.1, 0.05, 0.025]
SEEDS = [0, 1, 2]
COMMON = {"engine.tensorboard": False}


def kdzoo(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kdzoo.cli", *args], cwd=REPO, check=False)


def sweep(out: Path, name: str, grid: dict, overrides: dict, jobs: int) -> dict:
    path = out / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "grid": grid, "seeds": SEEDS, "overrides": overrides,
                                    "out": str(out / name)}))
    kdzoo("sweep", "-c", str(path), "--jobs", str(jobs))
    return json.loads((out / name / "results.json").read_text())


def _mean_std(values):
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else (None, None)


def _cell(values):
    mean, std = _mean_std(values)
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def step_times(runs: Path) -> dict[str, float]:
    """Median ms per training step of each row's runs (from metrics.jsonl: epoch_time_s over 13 steps)."""
    out = {}
    for row in ROWS:
        lines = [json.loads(line) for f in runs.glob(f"lr-*_recipe-ckd-{row}-????????/seed*/metrics.jsonl")
                 for line in f.read_text().splitlines()]
        epochs = [r["epoch_time_s"] for r in lines if "epoch_time_s" in r]
        out[row] = 1000 * statistics.median(epochs) / 13
    return out


def _summaries() -> list[float]:
    root = REPO / "runs" / "bench" / "few_sample"
    return [json.loads(f.read_text())["wall_time_s"] for f in root.glob("few-*/runs/*/seed*/summary.json")]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _torch() -> str:
    import torch

    return torch.__version__


def timing(out: Path) -> dict:
    """Wall time of 20 epochs of KD at 2,000 images with and without the teacher cache (one process)."""
    times = {}
    for cached in (False, True):
        run = out / f"timing_{'cached' if cached else 'live'}"
        summary = run / "summary.json"
        if not summary.is_file():
            kdzoo("distill", "-c", "configs/fashion_mnist/ckd/kd.yaml", "--out", str(run), "--quiet", "epochs=20",
                  "dataset.subset_size=2000", "schedule.name=constant", f"teacher.cache={str(cached).lower()}",
                  "engine.tensorboard=false")
        data = json.loads(summary.read_text())
        times["cached" if cached else "live"] = {"wall_time_s": data["wall_time_s"],
                                                 "test_top1": data["result"]["value"]}
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/few_sample")
    args = parser.parse_args()
    out = REPO / args.out
    recipes = {row: f"configs/fashion_mnist/ckd/{row}.yaml" for row in ROWS}
    first = sweep(out, "few-1000", {"recipe": list(recipes.values()), "optim.lr": LRS},
                  {**COMMON, "dataset.subset_size": 1000}, args.jobs)
    table = {}
    for r in first["rows"]:
        row = Path(r["point"]["recipe"]).stem
        table.setdefault(row, {})[r["point"]["optim.lr"]] = r
    best_lr = {row: max(LRS, key=lambda lr: _mean_std(table[row][lr]["val"])[0] or -1) for row in ROWS}
    chosen = out / "recipes"
    chosen.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in ROWS:
        data = yaml.safe_load((REPO / recipes[row]).read_text())
        data["optim"]["lr"] = best_lr[row]
        path = chosen / f"{row}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(str(path))
    second = sweep(out, "few-2000", {"recipe": paths}, {**COMMON, "dataset.subset_size": 2000}, args.jobs)
    at_2000 = {Path(r["point"]["recipe"]).stem: r for r in second["rows"]}
    times = timing(out)
    write(first, table, best_lr, at_2000, times)


def write(first, table, best_lr, at_2000, times) -> None:
    results = REPO / "benchmarks" / "results" / "few_sample"
    results.mkdir(parents=True, exist_ok=True)
    base = {size: _mean_std(rows["student"]["test"])[0] for size, rows in
            ((1000, {k: v[best_lr[k]] for k, v in table.items()}), (2000, at_2000))}
    lines = ["# Few-sample leaderboard: Fashion-MNIST, resnet32 teacher -> resnet8", "",
             "CKD's setting on our CPU proxy: N training images (stratified, a fresh draw per seed) split 80/20 into train "
             "and validation; the teacher's outputs are cached once per image (one training augmentation); plateau "
             "schedule (validation every epoch of the train images, patience 3, lr x0.1, 2 cuts, at most 40 "
             "epochs); test top-1 on the full 10k test set at the best validation point. Mean ± sample std over "
             "seeds 0, 1, 2. The lr is the best of {0.1, 0.05, 0.025} by mean validation top-1 in the 1,000-image "
             "sweep (`kdzoo sweep`), reused at 2,000 images. Gain: test top-1 minus the student's.", "",
             "| row | lr | 1,000: val | 1,000: test | gain | 2,000: val | 2,000: test | gain |", "|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        one, two = table[row][best_lr[row]], at_2000[row]
        gains = [(_mean_std(r["test"])[0] - base[size]) if r["test"] else None
                 for size, r in ((1000, one), (2000, two))]
        lines.append(f"| {row} | {best_lr[row]} | {_cell(one['val'])} | {_cell(one['test'])} | "
                     f"{gains[0]:+.2f} | {_cell(two['val'])} | {_cell(two['test'])} | {gains[1]:+.2f} |")
    lines += ["", "lr sweep at 1,000 images (val top-1 / test top-1, mean ± std over 3 seeds):", "",
              "| row | " + " | ".join(f"lr {lr}" for lr in LRS) + " |", "|---|" + "---|" * len(LRS)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(f"{_cell(table[row][lr]['val'])} / {_cell(table[row][lr]['test'])}"
                                                for lr in LRS) + " |")
    steps = step_times(REPO / "runs" / "bench" / "few_sample" / "few-1000" / "runs")
    lines += ["", "Step time at 1,000 images (800 train images: 13 steps of 64 samples per epoch; a ckd sample is a "
                  "group of 2 or 3 images, a mixup sample 2 or 3 images; cached teacher; median training-epoch time "
                  "over every epoch of every run of the row, 2 workers of 1 thread each):", "",
              "| row | ms / step | vs kd |", "|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row} | {steps[row]:.1f} | {steps[row] / steps['kd']:.2f}x |")
    live, cached = times["live"], times["cached"]
    lines += ["", f"Cached teacher: KD, 2,000 images, 20 epochs at constant lr, one process: "
                  f"{cached['wall_time_s']:.1f} s with the cache (the teacher runs once, over 1,600 images) against "
                  f"{live['wall_time_s']:.1f} s with the live teacher ({live['wall_time_s'] / cached['wall_time_s']:.2f}x);"
                  f" test top-1 {cached['test_top1']:.2f} vs {live['test_top1']:.2f}.", "",
              f"Hardware: {_cpu()}, 2 cores, torch {_torch()}, bf16 autocast; 2 sweep workers of 1 thread each "
              f"(another benchmark shared the cores for part of the time). {len(_summaries())} runs, "
              f"{sum(_summaries()) / 3600:.2f} h of training in total."]
    (results / "leaderboard.md").write_text("\n".join(lines) + "\n")
    (results / "results.json").write_text(json.dumps({"lr_sweep_1000": first, "best_lr": best_lr,
                                                      "at_2000": at_2000, "timing": times}, indent=1))
    (results / "command.txt").write_text("python benchmarks/few_sample.py --jobs 2\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
