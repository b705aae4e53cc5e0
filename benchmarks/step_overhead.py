"""Step overhead of distillation: a method's training step against (student step alone + teacher inference).

For a teacher/student pair on CIFAR-shaped random data, interleaved over repeats (one setting after another), times
  (a) the student's training step alone (CE only), (b) the teacher's inference alone, (c) each method's step,
once with kdzoo's default fast path (teacher first under inference_mode, channels_last, bf16 autocast where the
hardware has it) and once in plain fp32 (contiguous memory, student forward first); with `--settings
default,plain,compiled` also the default path under torch.compile (inductor; student, teacher and the methods in
`--compile-methods`, KD by default: compiling every method takes minutes each). Prints (c)/((a)+(b)) per
method, each method's ratio over KD's, and the default KD step's speed-up over the plain one as the last line.
`--memory` adds each default-path step's peak memory in a fresh process per method: the peak resident memory
over the warm-up and 3 steps above what the built program and its data held before them (Linux: VmHWM reset
through /proc/self/clear_refs), so the column is what the step itself needs (activations, optimizer state, banks).

    python benchmarks/step_overhead.py --methods all --settings default,plain,compiled --memory --repeats 20 \
        --out benchmarks/results/step_overhead.md
"""
from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdzoo.checkpoints.format import save_weights
from kdzoo.config import config_from_data
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.data import IndexedDataset, image_info
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.distillers import METHODS
from kdzoo.engine.compile import compile_program
from kdzoo.engine.device import Precision, resolve_precision
from kdzoo.engine.run_log import cpu_model
from kdzoo.engine.step import train_step
from kdzoo.models import Needs, create_model
from kdzoo.models.frozen import FrozenTeacher
from kdzoo.program import BuildContext, DataStream
from kdzoo.program.optim import build_optimizer
from kdzoo.regimes.offline import offline_program

# Where a method's step costs more than 1.15x KD's, the part of the step that costs the time (from profiles of
# the step and the layers' sizes; printed under the table). AB and FSP distil only in their init stage:
# their main step is the student's alone, hence ratios near (a)/((a)+(b)).
COST_NOTES = {
    "reviewkd": "ABF fusion modules: a 1x1 and a 3x3 conv per student stage at the teacher's width, on maps up to "
                "32x32, plus the HCL pyramid pooling; they cost about as much as the student itself.",
    "semckd": "one projector per (student stage, teacher stage) pair, 9 here, each a 1x1 -> 3x3 -> 1x1 conv stack "
              "at 2x the teacher's stage width; the 3x3 convs at 32x32 cost more than the student's forward.",
    "nst": "the per-sample C x C Gram products (student, teacher and cross) of each stage's spatially "
           "normalised maps, kept in fp32 for precision.",
    "ft": "the paraphraser/translator convs on the last stage map and the fp32 factor normalisation.",
    "augment": "a second student and teacher forward on the augmented copy x_aug (the teacher's fresh target), "
               "and with cutmix_pick (the default mode) a no-grad scoring pass of the student over the pool of "
               "n_run x B mixed images it picks x_aug from.",
    "hsakd": "the 4x rotated batch (4x) through student and teacher, and the _aux heads, copies of the later "
             "stages that cost about as much again as each backbone (benchmarks/results/hsakd_cost.md).",
}

SETTINGS = {
    "default": {"precision": "auto", "channels_last": True, "teacher_first": True},
    "plain": {"precision": "fp32", "channels_last": False, "teacher_first": False},
    "compiled": {"precision": "auto", "channels_last": True, "teacher_first": True, "compile": True},
}


def main(argv=None) -> int:
    parser = pair_parser(__doc__.splitlines()[0])
    parser.add_argument("--methods", default="kd", help="comma-separated, or 'all' (every method with a teacher)")
    parser.add_argument("--settings", default="default,plain")
    parser.add_argument("--compile-methods", default="kd", help="methods timed in the compiled setting")
    parser.add_argument("--memory", action="store_true", help="peak RSS per default-path step (a process each)")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # the child of --memory: one step's peak RSS
    args = parser.parse_args(argv)
    if args.peak_of:
        return peak_of(args)
    torch.manual_seed(0)

    methods = [m for m in METHODS.names() if METHODS.get(m).needs_teacher()] if args.methods == "all" \
        else args.methods.split(",")
    if "kd" not in methods:
        methods.insert(0, "kd")
    settings = args.settings.split(",")
    device = torch.device("cpu")
    info = image_info("cifar100", args.classes, 3, 32, (0.5,) * 3, (0.25,) * 3)
    n_train = 50_000
    targets = torch.randint(0, args.classes, (n_train,))

    with tempfile.TemporaryDirectory() as tmp:
        teacher_file = random_teacher(Path(tmp), args.teacher, args.classes)
        teacher = create_model(args.teacher, num_classes=args.classes)
        # methods on rotation heads (hsakd) run on the pair's _aux models and 4x rotated batches
        aux = [m for m in methods if METHODS.get(m).student_needs.heads]
        aux_teacher_file = random_teacher(Path(tmp), f"{args.teacher}_aux", args.classes) if aux else None
        med, skipped = {}, {}
        for setting in settings:  # one setting's programs at a time: all 31 methods x 3 settings held at once
            timers = {}           # took over 24 GB (banks of 50k rows each)
            options = SETTINGS[setting]
            precision = Precision(resolve_precision(options["precision"], device), device)
            engine = engine_section(options, precision)
            timers[(setting, "student")] = regime_step(args, info, targets, engine, precision, {"ce": 1.0},
                                                       None, compiled=options.get("compile", False))
            timers[(setting, "teacher")] = teacher_inference(teacher, args, options, precision)
            for method in methods:
                if options.get("compile") and method not in args.compile_methods.split(","):
                    continue
                cls = METHODS.get(method)
                loss = {"ce": 1.0, **{term: 1.0 for term in cls.term_names()}}
                sections = None
                if cls.term_names() == ():  # an optimizer step (DOT): the loss it steps, its section names it
                    loss, sections = dict(cls.recipes.loss), {method: {}}
                if method == "nd":  # class means come from an epoch pass before the first step: the step is the
                    sections = {"nd": {"centers": "head"}}  # same with the classifier's rows as centres
                pair = (f"{args.student}_aux", aux_teacher_file) if method in aux else (args.student, teacher_file)
                try:  # a method whose step needs data this harness does not make (grouped, unlabelled) is named
                    step = regime_step(args, info, targets, engine, precision, loss, pair[1], student=pair[0],
                                       compiled=options.get("compile", False), methods=sections,
                                       views=tuple(cls.recipes.dataset.get("views", {"x": "train"})))
                    step()
                except Exception as err:  # noqa: BLE001 - reported under the table, never silently dropped
                    skipped[method] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                    continue
                timers[(setting, method)] = step
            med.update(sample(timers, args))
            timers.clear()  # the programs, their banks and optimizers go before the next setting is built
            step = None
            gc.collect()

    methods = [m for m in methods if m not in skipped]
    peaks = {m: child_peak(args, m) for m in ["student", *methods]} if args.memory else {}
    lines = [f"pair {args.teacher} -> {args.student}, batch {args.batch}, {args.classes} classes, CPU "
             f"({torch.get_num_threads()} threads of {cpu_model()}), median of {args.repeats} interleaved repeats, "
             f"{time.strftime('%Y-%m-%d')}",
             "", "| setting | method | step ms | ratio (c)/((a)+(b)) | ratio / KD ratio | step peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for setting in settings:
        base = med[(setting, "student")] + med[(setting, "teacher")]
        kd_ratio = med[(setting, "kd")] / base
        peak = (lambda m: f"{peaks[m]:.0f}" if setting == "default" and m in peaks else "")  # noqa: E731
        lines.append(f"| {setting} | (a) student step | {med[(setting, 'student')]:.1f} | | | {peak('student')} |")
        lines.append(f"| {setting} | (b) teacher inference | {med[(setting, 'teacher')]:.1f} | | | |")
        for method in methods:
            if (setting, method) not in med:
                continue
            ratio = med[(setting, method)] / base
            lines.append(f"| {setting} | {method} | {med[(setting, method)]:.1f} | {ratio:.2f} | "
                         f"{ratio / kd_ratio:.2f} | {peak(method)} |")
    if {"default", "plain"} <= set(settings):
        lines.append("")
        lines.append(f"default KD step speed-up over plain: {med[('plain', 'kd')] / med[('default', 'kd')]:.2f}x")
    if {"default", "compiled"} <= set(settings):
        lines.append(f"compiled KD step against the default one: {med[('default', 'kd')] / med[('compiled', 'kd')]:.2f}x"
                     " (after compiling; the first steps pay the compile)")
    slow = [m for m in methods if m in COST_NOTES and med[("default", m)] / med[("default", "kd")] > 1.15]
    if slow and "default" in settings:
        lines += ["", "Methods over 1.15x KD's ratio (default path), and what costs the time:"]
        lines += [f"- {m}: {COST_NOTES[m]}" for m in slow]
    if skipped:
        lines += ["", "Not timed here (their step needs data this harness does not build; their regimes' own "
                  "benchmarks time them):"]
        lines += [f"- {m}: {why}" for m, why in sorted(skipped.items())]
    write_report(args.out, "\n".join(lines))
    return 0


def pair_parser(description: str, repeats: int = 20) -> argparse.ArgumentParser:
    """The arguments every step benchmark of a teacher -> student pair takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="also write the markdown table here")
    return parser


def write_report(out, text: str) -> None:
    print(text)
    if out:
        Path(out).write_text(f"Command: `python {' '.join(sys.argv)}`\n\n{text}\n")


def random_teacher(folder: Path, arch: str, classes: int) -> Path:
    """A freshly initialised CIFAR-shaped teacher saved as a checkpoint (its weights do not change a step's cost)."""
    path = folder / f"{arch}.safetensors"
    save_weights(path, create_model(arch, num_classes=classes).state_dict(),
                 {"arch": arch, "num_classes": classes, "in_channels": 3, "dataset": "cifar100"})
    return path


def engine_section(options: dict, precision: Precision) -> dict:
    """The recipe's engine section for one of SETTINGS (no progress bars or TensorBoard in a timing harness)."""
    return {"precision": precision.name, "channels_last": options["channels_last"],
            "teacher_first": options["teacher_first"], "progress": False, "tensorboard": False}


def sample(timers: dict, args) -> dict:
    """Median ms of each timer over `args.repeats`, interleaved: drifts in machine speed hit every entry alike."""
    samples = {key: [] for key in timers}
    for r in range(args.warmup + args.repeats):
        for key, fn in timers.items():
            started = time.perf_counter()
            fn()
            if r >= args.warmup:
                samples[key].append(time.perf_counter() - started)
    return {key: statistics.median(v) * 1000 for key, v in samples.items()}


def regime_step(args, info, targets, engine, precision, loss, teacher_file, student=None, compiled=False,
                teacher_options=None, methods=None, views=("x",), device=torch.device("cpu"), compile_mode=None):
    """A closure running one real training step of the offline regime (the engine's own step code), on the
    batch its train stream gives (rotate4 makes it 4x the rows); `teacher_options`: more of the teacher section;
    `methods`: the recipe's methods section; `views`: the named views each batch carries (MLKD's strong one);
    `device`: where the program and its batch live (benchmarks/gpu_check.py times it on a GPU)."""
    data = {"student": {"arch": student or args.student}, "loss": loss, "engine": engine, "epochs": 240,
            "dataset": {"name": "cifar100", "batch_size": args.batch}, "methods": methods or {}}
    if teacher_file is not None:
        data["teacher"] = {"checkpoint": str(teacher_file), **(teacher_options or {})}
    cfg = config_from_data(data)
    images = torch.zeros(len(targets), 3, 32, 32)
    dataset = InMemoryImageDataset(images, targets, classes=[str(c) for c in range(args.classes)])
    dataset.info = info
    streams = {"train": DataStream(IndexedDataset(dataset), args.batch, train=True, views=tuple(views), device=device),
               "test": DataStream(dataset, args.batch, device=device)}
    program = offline_program(BuildContext(cfg=cfg, device=device, dist=DistInfo()),
                              streams, info)
    if compiled:
        compile_program(program, mode=compile_mode)
    phase = program.phases[-1]
    optimizer = (phase.make_optimizer or build_optimizer)(phase.params, cfg.optim, cfg.optim.lr)
    images = torch.randn(args.batch, 3, 32, 32)
    if tuple(views) != ("x",):
        images = {view: torch.randn(args.batch, 3, 32, 32) for view in views}
    labels = torch.randint(0, args.classes, (args.batch,))
    index = torch.randint(0, len(targets), (args.batch,))
    stream = program.data["train"]
    stream.channels_last = engine.get("channels_last", False)
    batch: Batch = stream.batch((images, labels, index))
    program.train(True)
    counter = {"step": 0}
    scaler = precision.scaler()  # fp16 (GPUs without bf16) steps with loss scaling, as the engine's

    def run():
        info_ = StepInfo(epoch=0, epochs=240, step=counter["step"], steps_per_epoch=782)
        train_step(phase, batch, info_, optimizer, precision, scaler)
        program.after_optimizer_step()
        phase.after_step()
        counter["step"] += 1

    return run


def teacher_inference(model, args, options, precision, device=torch.device("cpu")):
    fmt = torch.channels_last if options["channels_last"] else torch.contiguous_format
    teacher = FrozenTeacher(model, Needs(logits=True)).to(device=device, memory_format=fmt)
    if options.get("compile"):
        teacher.compile(**({"mode": options["compile_mode"]} if options.get("compile_mode") else {}))
    images = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    def run():
        with precision.autocast():
            teacher(images)

    return run


def child_peak(args, method: str) -> float:
    """Peak RSS (MB) of one default-path step of `method` ("student": CE alone), in a fresh process."""
    command = [sys.executable, __file__, "--peak-of", method, "--student", args.student, "--teacher", args.teacher,
               "--batch", str(args.batch), "--classes", str(args.classes), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def peak_of(args) -> int:
    device = torch.device("cpu")
    info = image_info("cifar100", args.classes, 3, 32, (0.5,) * 3, (0.25,) * 3)
    targets = torch.randint(0, args.classes, (50_000,))
    options = SETTINGS["default"]
    precision = Precision(resolve_precision(options["precision"], device), device)
    engine = engine_section(options, precision)
    method = args.peak_of
    with tempfile.TemporaryDirectory() as tmp:
        teacher_file, loss, student = None, {"ce": 1.0}, args.student
        if method != "student":
            cls = METHODS.get(method)
            arch = f"{args.teacher}_aux" if cls.student_needs.heads else args.teacher
            student = f"{args.student}_aux" if cls.student_needs.heads else args.student
            teacher_file = random_teacher(Path(tmp), arch, args.classes)
            loss = {"ce": 1.0, **{term: 1.0 for term in cls.term_names()}}
        run = regime_step(args, info, targets, engine, precision, loss, teacher_file, student=student)
        before = _status_mb("VmRSS")  # the built program and its data, before any step
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak (VmHWM) from here
        for _ in range(args.warmup + 3):
            run()
    print(f"peak_rss_mb {_status_mb('VmHWM') - before:.1f}")
    return 0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    raise SystemExit(main())
