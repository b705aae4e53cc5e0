"""Epoch time of `dataset.loader: device` against the PyTorch loader on the CPU, one run at a time.

Two measurements:
  data   an epoch of the training stream alone (batches drawn, augmented, normalised, made `Batch`es), batch 128:
         Fashion-MNIST's 60,000 images (pad-crop 2 + normalise), 50,000 synthetic CIFAR-shaped images (pad-crop 4,
         flip, normalise: CIFAR's pipeline) and the same under DS-SRD's two `jitter` views (each also colour
         jitter p 0.8 and greyscale p 0.2), PyTorch loader with 0 and 2 workers, `loader: device`;
  train  the Fashion-MNIST KD recipe (configs/fashion_mnist/kd.yaml: resnet8 from a resnet teacher, batch 64) on
         `--train-images` images (a stratified subset), through the CLI, PyTorch loader and `loader: device`
         alternating, the engine's `epoch_time_s` (evaluation excluded).
Medians over `--repeats`. The teacher is trained for one epoch on 3,000 images (its accuracy does not change a
step's cost).

    python benchmarks/loader_epoch.py --repeats 3 --out benchmarks/results/loader_epoch_cpu.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_epoch import epoch_times, kdzoo  # noqa: E402 - the CLI-run helpers (a finished run is reused)

from kdzoo.core.dist import DistInfo
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.registry import build_dataset
from kdzoo.data.stream import DataStream
from kdzoo.data.transforms import small_image_transform
from kdzoo.engine.run_log import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def cifar_shaped(n: int, views: tuple[str, ...] = ()):
    """n random CIFAR-100-shaped images under CIFAR's training pipeline, or under the named view pipelines."""
    from kdzoo.data.cifar import CIFAR100_INFO as info
    from kdzoo.data.registry import _builder
    from kdzoo.data.views import IDENTITY, MultiViewDataset, pipeline

    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = InMemoryImageDataset(images, torch.arange(n) % 100, classes=[str(i) for i in range(100)],
                                   transform=small_image_transform(info, train=True, augment=True, native_size=32,
                                                                   padding=4, flip=True))
    if not views:
        return dataset
    dataset.transform, dataset.info = IDENTITY, info
    return MultiViewDataset(dataset, {v: pipeline(v.rstrip("2"), _builder("cifar100"), info, True) for v in views})


def data_epoch(dataset, *, on_device: bool, workers: int) -> float:
    stream = DataStream(dataset, 128, train=True, num_workers=workers, on_device=on_device)
    loader = stream.loader(DistInfo())
    start = time.perf_counter()
    for raw in loader:
        stream.batch(raw)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run")
    parser.add_argument("--work", default="runs/bench_loader_epoch")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    datasets = {"Fashion-MNIST train (60,000 x 1x28x28)": build_dataset("fashion_mnist", "train"),
                "CIFAR-shaped (50,000 x 3x32x32)": cifar_shaped(50_000),
                "CIFAR-shaped, two jitter views (DS-SRD)": cifar_shaped(50_000, ("jitter", "jitter2"))}
    settings = {"PyTorch loader, 0 workers": (False, 0), "PyTorch loader, 2 workers": (False, 2),
                "loader: device": (True, 0)}
    lines = []
    for name, dataset in datasets.items():
        times = {s: [] for s in settings}
        for _ in range(args.repeats):
            for setting, (on_device, workers) in settings.items():
                times[setting].append(data_epoch(dataset, on_device=on_device, workers=workers))
        base = statistics.median(times["PyTorch loader, 0 workers"])
        for setting, values in times.items():
            median = statistics.median(values)
            lines.append(f"| data epoch | {name} | {setting} | {median:.2f} | {base / median:.1f}x |")
            print(lines[-1], flush=True)
    if not args.skip_train:
        work = ROOT / args.work
        teacher = work / "teacher"
        if not (teacher / "summary.json").is_file():
            kdzoo("train", "configs/fashion_mnist/teacher.yaml", teacher, "epochs=1", "dataset.subset.size=3000",
                  "engine.tensorboard=false")
        budget = [f"epochs={args.epochs}", f"teacher.checkpoint={teacher}", f"dataset.subset.size={args.train_images}", "engine.progress=false",
                  "engine.tensorboard=false"]
        times = {"torch": [], "device": []}
        for repeat in range(args.repeats):
            for loader in times:
                run = work / f"{loader}-{repeat}"
                kdzoo("distill", "configs/fashion_mnist/kd.yaml", run, *budget, f"dataset.loader={loader}")
                times[loader] += epoch_times(run)
        base = statistics.median(times["torch"])
        for loader, values in times.items():
            median = statistics.median(values)
            lines.append(f"| KD training epoch | Fashion-MNIST {args.train_images:,}, resnet8 <- teacher, batch 64 | "
                         f"{'loader: device' if loader == 'device' else 'PyTorch loader, 0 workers'} | "
                         f"{median:.2f} | {base / median:.2f}x |")
            print(lines[-1], flush=True)
    command = "python benchmarks/loader_epoch.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        f"Command: `{command}`", "",
        f"CPU: {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}. Medians over {args.repeats} repeats "
        f"(training: over all epochs of all runs), one measurement at a time.", "",
        "| what | data | loader | epoch s | speed-up |", "|---|---|---|---|---|", *lines, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
