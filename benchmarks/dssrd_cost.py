"""What DS-SRD's pieces cost per training step, against KD's: one step (forward of every network a recipe reads,
backward, no optimizer) of each leaderboard recipe on real Fashion-MNIST batches of 64, resnet32 -> resnet8, and
proto's per-epoch pass (teacher embedding of the training images + k-means) apart.

    python benchmarks/dssrd_cost.py --out benchmarks/results/dssrd_cost.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdzoo.config import load_config
from kdzoo.core.batch import StepInfo
from kdzoo.engine.step import weighted_total
from kdzoo.engine.trainer import make_engine
from kdzoo.program import Runtime

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # row -> (recipe under configs/fashion_mnist, overrides)
    "kd": ("kd", []),
    "crd_kd": ("crd_kd", []),
    "kd_cutmix": ("dssrd/kd_cutmix", []),
    "kd_cutmix_pick (student_entropy)": ("dssrd/kd_cutmix_pick", []),
    "kd_cutmix_pick (teacher_entropy)": ("dssrd/kd_cutmix_pick", ["methods.augment.criterion=teacher_entropy"]),
    "kd_cutmix_pick (kld)": ("dssrd/kd_cutmix_pick", ["methods.augment.criterion=kld"]),
    "crd_kd_cutmix_pick": ("dssrd/crd_kd_cutmix_pick", []),
    "crd_proto": ("dssrd/crd_proto", []),
    "dssrd (double student)": ("dssrd/dssrd", []),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/bench/fashion_mnist/teacher")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    common = ["engine.progress=false", "engine.tensorboard=false", "dataset.subset.size=3000", "dataset.subset.seed=0",
              f"teacher.checkpoint={args.teacher}"]
    results, passes, precision = {}, {}, "?"
    for row, (recipe, overrides) in ROWS.items():
        cfg = load_config(ROOT / "configs" / "fashion_mnist" / f"{recipe}.yaml", [*common, *overrides])
        with tempfile.TemporaryDirectory() as out:
            engine = make_engine(cfg, Path(out) / "run", quiet=True)
            program, phase = engine.program, engine.program.phases[-1]
            precision = engine.precision.name
            if any(getattr(m, "epoch_passes", False) for m in program.trainable.methods.values()):
                started = time.perf_counter()
                stats = phase.on_epoch_start(cfg.epochs - 1, Runtime(program, engine.device, engine.dist))
                passes[row] = (time.perf_counter() - started, stats)
            stream = program.data[phase.stream]
            batches = iter(stream.loader(engine.dist))
            program.train(True)
            samples = []
            for i in range(args.repeats + 2):
                batch = stream.batch(next(batches))
                started = time.perf_counter()
                with engine.precision.autocast():
                    terms = phase.step(batch, StepInfo(epoch=cfg.epochs - 1, epochs=cfg.epochs, step=i,
                                                       steps_per_epoch=len(stream.loader(engine.dist))))
                weighted_total(terms, phase.weights).backward()
                for p in phase.params:
                    p.grad = None
                if i >= 2:
                    samples.append(time.perf_counter() - started)
            results[row] = statistics.median(samples) * 1000
            engine.close()
    kd = results["kd"]
    lines = [f"Fashion-MNIST, resnet32 -> resnet8, batch 64, {precision}, CPU ({args.threads} thread(s)), median of "
             f"{args.repeats} steps (forward + backward, no optimizer step)", "",
             "| row | ms / step | x KD |", "|---|---|---|"]
    lines += [f"| {row} | {ms:.1f} | {ms / kd:.2f} |" for row, ms in results.items()]
    if passes:
        lines += ["", "proto's per-epoch pass over the 3,000 training images (teacher embedding + k-means, K 30/48/60):",
                  ""]
        for row, (seconds, stats) in passes.items():
            lines.append(f"- {row}: {seconds:.2f} s ({', '.join(f'{k} {v}' for k, v in (stats or {}).items())})")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"Command: `python {' '.join(sys.argv)}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
