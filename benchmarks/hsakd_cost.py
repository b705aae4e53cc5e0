"""Where an HSAKD step's time goes: the 4x rotated batch versus the auxiliary heads.

Times, on random CIFAR-shaped data (batch 64 -> 256 rotated rows), the student's forward + backward and the
teacher's inference, each for the plain network on 64 rows, the plain network on 256 rows, and the `_aux`
network with its heads on 256 rows (bf16 autocast where the CPU has it, channels_last, median of repeats).

    python benchmarks/hsakd_cost.py --out benchmarks/results/hsakd_cost.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from kdzoo.engine.device import Precision, resolve_precision
from kdzoo.models import FeatureModel, Needs, create_model


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = Precision(resolve_precision("auto", device), device)
    rows = {}
    for role, arch in (("student", args.student), ("teacher", args.teacher)):
        for label, name, n, heads in (("plain, B rows", arch, args.batch, False),
                                      ("plain, 4B rows", arch, 4 * args.batch, False),
                                      ("_aux with heads, 4B rows", f"{arch}_aux", 4 * args.batch, True)):
            model = create_model(name, num_classes=100).to(memory_format=torch.channels_last)
            net = FeatureModel(model, Needs(logits=True, heads=heads))
            x = torch.randn(n, 3, 32, 32).contiguous(memory_format=torch.channels_last)

            def step(net=net, x=x, role=role, heads=heads):
                with precision.autocast():
                    if role == "teacher":
                        with torch.inference_mode():
                            net.eval()(x)
                        return
                    f = net.train()(x)
                    loss = f.logits.float().sum() + (sum(h.float().sum() for h in f.heads) if heads else 0)
                loss.backward()

            rows[(role, label)] = timed(step, args.repeats)
    lines = [f"{args.teacher} -> {args.student}, batch {args.batch} ({4 * args.batch} rotated rows), "
             f"{precision.name}, CPU ({torch.get_num_threads()} threads), median of {args.repeats}", "",
             "| network | what | ms | x plain B rows |", "|---|---|---|---|"]
    for (role, label), ms in rows.items():
        base = rows[(role, "plain, B rows")]
        lines.append(f"| {role} {'forward+backward' if role == 'student' else 'inference'} | {label} | {ms:.1f} | "
                     f"{ms / base:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"Command: `python {' '.join(sys.argv)}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
