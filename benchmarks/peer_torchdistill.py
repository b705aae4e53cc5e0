"""kdzoo's default KD step against torchdistill's (its DistillationBox, default settings), side by side in one
process: the same teacher -> student pair (CIFAR-100 shapes), the same batch, the same machine, interleaved repeats.

torchdistill's step: `box.forward_process(images, targets, supp_dict)` then `box.post_forward_process(loss)` (its
training loop's two calls): teacher forward (no grad; fp32, contiguous: its defaults), student forward, its
KDLoss (T 4, alpha 0.1: 0.1 CE + 0.9 * T^2 KL, kdzoo's KD recipe), backward, SGD step. kdzoo's: the offline
regime's real step (benchmarks/step_overhead.py), default engine settings (teacher first under inference_mode,
channels_last, bf16 autocast where the CPU has it), the same loss weights; and the same step with the replayed
teacher (`teacher.cache: replay`: the step reads stored top-k soft labels by dataset index and runs no teacher).

    pip install kdzoo[bench]   (torchdistill)
    python benchmarks/peer_torchdistill.py --repeats 20 --out benchmarks/results/peer_torchdistill.md
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import (  # noqa: E402  (the benchmark helper next to this file)
    SETTINGS,
    engine_section,
    pair_parser,
    random_teacher,
    regime_step,
    write_report,
)

from kdzoo.data import image_info  # noqa: E402
from kdzoo.engine.device import Precision, resolve_precision  # noqa: E402
from kdzoo.engine.run_log import cpu_model  # noqa: E402
from kdzoo.models import create_model  # noqa: E402


def torchdistill_step(teacher, student, args):
    """A closure running one training step of torchdistill's DistillationBox with default settings."""
    from torchdistill.core.distillation import DistillationBox

    module = {"forward_proc": "forward_batch_only", "requires_grad": False}
    config = {
        "num_epochs": 240,
        "teacher": dict(module),
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                                      "teacher_module_path": ".", "teacher_module_io": "output",
                                                      "temperature": 4.0, "alpha": 0.1, "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    box = DistillationBox(teacher, student, {}, config, torch.device("cpu"), None, False, 1.0)
    box.teacher_model.eval()
    box.student_model.train()
    images = torch.randn(args.batch, 3, 32, 32)
    targets = torch.randint(0, args.classes, (args.batch,))

    def run():
        loss = box.forward_process(images, targets, supp_dict={})
        box.post_forward_process(loss)

    return run


def replayed_kd_step(args, info, targets, engine, precision, teacher_file, folder: Path):
    """kdzoo's KD step under `teacher.cache: replay`: the offline regime's real step with its replaying teacher
    source (kdzoo's ReplayTeacher on a cache of stored top-k soft labels). The cache holds random soft labels
    (their values do not change the cost), since recording one needs the dataset on disk; the data half of a replay
    (each image's recorded crop and flip) runs in the DataLoader, outside the step, as data loading does for every
    row here (benchmarks/replay_epoch.py times whole epochs)."""
    import kdzoo.program.teacher_sources as sources
    from kdzoo.program.replay_store import ReplayCache
    from kdzoo.program.teacher_replay import ReplayTeacher, replay_temperature

    def parts(cfg, streams, methods, teacher, info_, device, out, is_main, log=print):
        n, classes = len(targets), info_.num_classes
        k = min(cfg.teacher.replay_topk, classes)
        top = torch.rand(n, classes).softmax(1).topk(k, dim=1)
        cache = ReplayCache(folder, {"bench": "random soft labels"})
        cache.write_params(0, torch.zeros(n, 0))  # a complete epoch holds its (here empty) augmentation rows
        cache.write_soft(0, top.values.half(), top.indices.to(torch.int16))
        source = ReplayTeacher(cache, None, n, classes, k, replay_temperature(methods), device)
        source.start_epoch(0)
        return source, lambda epoch: {}

    original, sources.replay_program_parts = sources.replay_program_parts, parts
    try:
        return regime_step(args, info, targets, engine, precision, {"ce": 0.1, "kd": 0.9}, teacher_file,
                           teacher_options={"cache": "replay"})
    finally:
        sources.replay_program_parts = original


def main(argv=None) -> int:
    parser = pair_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    info = image_info("cifar100", args.classes, 3, 32, (0.5,) * 3, (0.25,) * 3)
    targets = torch.randint(0, args.classes, (50_000,))
    precision = Precision(resolve_precision("auto", device), device)
    engine = engine_section(SETTINGS["default"], precision)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_file = random_teacher(Path(tmp), args.teacher, args.classes)
        timers = {
            "torchdistill KD (DistillationBox, defaults)": torchdistill_step(
                create_model(args.teacher, num_classes=args.classes), create_model(args.student, num_classes=args.classes),
                args),
            "kdzoo KD (default engine)": regime_step(args, info, targets, engine, precision, {"ce": 0.1, "kd": 0.9},
                                                     teacher_file),
            "kdzoo KD from the replay cache (teacher.cache: replay)": replayed_kd_step(
                args, info, targets, engine, precision, teacher_file, Path(tmp) / "replay"),
            "kdzoo student step alone (CE)": regime_step(args, info, targets, engine, precision, {"ce": 1.0}, None),
        }
        samples = {name: [] for name in timers}
        for r in range(args.warmup + args.repeats):
            for name, fn in timers.items():  # interleaved: machine drift hits every entry alike
                started = time.perf_counter()
                fn()
                if r >= args.warmup:
                    samples[name].append(time.perf_counter() - started)
    med = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    peer, ours, replayed, alone = med.values()
    lines = [f"pair {args.teacher} -> {args.student}, batch {args.batch}, {args.classes} classes, CPU "
             f"({torch.get_num_threads()} threads of {cpu_model()}, kdzoo precision {precision.name}), median of "
             f"{args.repeats} interleaved repeats; torch {torch.__version__}, torchdistill {version('torchdistill')}, "
             f"{time.strftime('%Y-%m-%d')}", "", "| step | ms | torchdistill / this |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {peer / ms:.2f}x |" for name, ms in med.items()]
    lines += ["", f"kdzoo's default KD step is {peer / ours:.2f}x faster than torchdistill's; KD from the replay "
                  f"cache (no teacher forward) {peer / replayed:.2f}x, {replayed / alone:.2f}x the student step alone "
                  "(benchmarks/replay_epoch.py times whole replayed epochs)."]
    write_report(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
