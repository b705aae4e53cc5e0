"""One prepared check of kdzoo's GPU path: every regime runs and its step never waits for the host, the KD step's
time against its limit, a full epoch per loader, the replayed teacher's epoch, DALI; one table.

Sections (all on synthetic CIFAR-100-shaped data written in the real on-disk format, random-weight teachers: a
step's cost does not depend on the weights):
  regimes  each regime case trains `--steps` steps (one epoch) and evaluates once through the engine. Host
           synchronisations are counted inside every step after the first (`PhaseRunner.one_step`: batch, optimizer
           step, per-step hooks) with `torch.cuda.set_sync_debug_mode("warn")` on CUDA and, on every device, the
           tensor calls that synchronise a GPU (`kdzoo.core.host_sync`).
  step     KD resnet32x4 -> resnet8x4 at each `--batches`: the student's training step alone (CE) plus the teacher's
           inference alone is the limit; the KD step in the default setting (teacher first, channels_last, bf16
           where the device has it) and plain (fp32, contiguous). Mean ms over `--repeats` steps queued back to
           back (one synchronisation at the end), peak memory.
  compiled the same, compiled (engine.compile; `--autotune` adds mode max-autotune-no-cudagraphs); last, since
           compiling takes minutes.
  epoch    a training epoch of `--images` images (the second of two: the first pays worker start-up and cuDNN's
           search), KD through the engine, `loader: device` against the PyTorch loader with `--workers` workers;
           evaluation timed apart. The 240-epoch projection follows from these.
  replay   the replayed teacher's epoch (`teacher.cache: replay`, recorded by a first run) against the student's
           epoch alone (CE), same images, second epochs.
No section, and no step setting, starts after `--budget-min` minutes; the report is written after each section.
  dali     `loader: dali` on a tiny synthetic JPEG image folder: whether DALI served the run, or why not.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md       # one GPU: under 8 min on an H100
    python benchmarks/gpu_check.py --device cpu --quick                       # the tests' run: small sizes

On the lent device machine (python3 there holds torch; kdzoo runs from src/; faiss-cpu, which proto's k-means
needs, travels as a wheel in the ignored folder .whl/, fetched here as the device tool's README shows), with
carry [".whl"] and a timeout that leaves time for one rerun:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && \
        python3 benchmarks/gpu_check.py --budget-min 7 --out $OUT/gpu_check.md
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_overhead  # noqa: E402 - the step harness shared with the CPU benchmark

from kdzoo.config import config_from_data  # noqa: E402
from kdzoo.core.host_sync import HostSyncs  # noqa: E402
from kdzoo.data import image_info  # noqa: E402
from kdzoo.engine.device import Precision, resolve_precision  # noqa: E402
from kdzoo.engine.loop import PhaseRunner  # noqa: E402
from kdzoo.engine.run_log import cpu_model  # noqa: E402
from kdzoo.engine.trainer import make_engine  # noqa: E402
from kdzoo.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# in the order they run: what a short lease must not miss first, the compiles (minutes) last
SECTIONS = ("regimes", "step", "epoch", "replay", "dali", "compiled")
STEP_HEADER = ("| batch | setting | student step ms | teacher inference ms | limit ms | KD step ms | KD / limit | "
               "KD peak MB |\n|---|---|---|---|---|---|---|---|")
CONFIGS = ROOT / "configs"
REPDISTILLER_EPOCH_MIN = 1.0  # RepDistiller's CIFAR-100 KD on one V100: about a minute per epoch (issue 27)


def write_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """root/cifar-100-python/{train,test,meta}: torchvision's pickles, random pixels and labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, size=n).tolist()
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [label // 5 for label in fine],
                 "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=4))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))


def write_jpeg_folder(root: Path, per_class: int, size: int = 72) -> None:
    """root/{train,val}/<class>/*.JPEG: an ImageFolder of random JPEGs (DALI decodes them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


class Check:
    """The run's sizes, folders and collected rows."""

    def __init__(self, args):
        self.args, self.device = args, torch.device(args.device)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
        self.data = self.work / "data"
        self.rows: dict[str, list[str]] = {k: [] for k in SECTIONS}
        self.epoch: dict[str, dict] = {}  # loader -> its epoch run (the projection reads it)
        self.replayed: dict[str, dict] = {}  # record / replay / student -> its run
        self.default_ratio: dict[int, float] = {}  # batch -> the default KD step's ratio to its limit
        self.started = time.perf_counter()
        self.notes: list[str] = []
        self.teachers: dict[str, Path] = {}
        for stale in ("runs", "replay0", "replay"):  # a rerun in the same --work records and trains afresh
            shutil.rmtree(self.work / stale, ignore_errors=True)

    def teacher(self, arch: str) -> Path:
        if arch not in self.teachers:
            self.teachers[arch] = step_overhead.random_teacher(self.work, arch, 100)
        return self.teachers[arch]

    def recipe(self, data: dict, *, images: int, batch: int, loader: str = "torch", workers: int = 0,
               epochs: int = 1) -> dict:
        """`data` (a recipe's sections) on the synthetic CIFAR-100: `epochs` epochs of `images` training images."""
        engine = {"progress": False, "tensorboard": False, "log_every": 50, "precision": "auto",
                  "device": self.args.device, **data.get("engine", {})}
        dataset = {**data.get("dataset", {}), "name": "cifar100", "root": str(self.data), "download": False,
                   "batch_size": batch, "eval_batch_size": 512, "loader": loader, "num_workers": workers}
        if images < self.args.images:
            dataset["subset"] = {"size": images}
        return {**data, "epochs": epochs, "seed": 0, "dataset": dataset, "engine": engine}

    def run(self, name: str, data: dict, *, count_syncs: bool = False) -> dict:
        """Train `data` for its one epoch through the engine; its metrics, evaluation time and the host
        synchronisations of each step (when asked)."""
        cfg = config_from_data(data)
        out = self.work / "runs" / name.replace(" ", "_").replace(":", "").replace(",", "")
        engine = make_engine(cfg, out, quiet=True, log=lambda line: None)
        syncs: list[dict] = []
        eval_s: list[float] = []
        for phase in engine.program.phases:
            phase.evaluators = [timed(e, eval_s, self.device) for e in phase.evaluators]
        original = PhaseRunner.one_step

        def counted(runner, *a, **k):
            with HostSyncs(self.device) as s:
                out_ = original(runner, *a, **k)
            syncs.append(dict(s.counts, total=s.total))
            return out_

        patch = _patched(PhaseRunner, "one_step", counted) if count_syncs else contextlib.nullcontext()
        started = time.perf_counter()
        with patch:
            engine.fit()
        wall = time.perf_counter() - started
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        trained = [e for e in lines if "epoch_time_s" in e]
        summary = json.loads((out / "summary.json").read_text())
        # the last epoch: the first also pays worker start-up and cuDNN's algorithm search
        return {"epoch_s": trained[-1]["epoch_time_s"], "steps": len(syncs), "syncs": syncs, "wall_s": wall,
                "eval_s": eval_s[-1] if eval_s else 0.0, "best": summary.get("best_value"), "select": summary.get("selected_by", ""),
                "peak_cuda_mb": trained[-1].get("peak_cuda_mb"), "engine": engine, "out": out}


def timed(evaluator: Callable, into: list, device: torch.device) -> Callable:
    def run(runtime):
        sync(device)
        started = time.perf_counter()
        result = evaluator(runtime)
        sync(device)
        into.append(time.perf_counter() - started)
        return result

    return run


@contextlib.contextmanager
def _patched(owner, name: str, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def regime_cases(check: Check) -> list[tuple[str, Callable[[], dict]]]:
    """(name, recipe sections) of each regime case, in the order they run (the linear probe reads BYOL's run)."""
    a = check.args
    student, teacher = a.student, a.teacher
    pair = {"student": {"arch": student}, "teacher": {"checkpoint": str(check.teacher(teacher))}}

    def from_recipe(path: str, **more) -> dict:
        data = load_recipe(CONFIGS / path)
        keep = {k: data[k] for k in ("regime", "loss", "methods", "optim", "schedule", "self_supervised", "dataset")
                if k in data}
        keep["dataset"] = {k: v for k, v in keep.get("dataset", {}).items() if k == "views"}
        return {**keep, **pair, **more}

    kd = {"loss": {"ce": 0.1, "kd": 0.9}, **pair}
    bank = max(16, min(4096, a.steps * a.batch // 4))
    # proto: K clusters of the images (at most one per 10), negatives that the batch always leaves free (K - batch)
    clusters = max(2, dssrd_images(a) // 10)
    dssrd = from_recipe("cifar100/dssrd/double_student/resnet32x4-resnet8x4.yaml",
                        methods={"kd": {"teacher_view": "x2"}, "crd": {"nce_k": bank},
                                 "proto": {"key_network": "student", "key_view": "x2", "warmup_epochs": 0,
                                           "clusters": [clusters], "negatives": max(1, min(100, clusters - a.batch))}})
    return [
        ("offline: kd (logit)", lambda: kd),
        ("offline: fitnet (feature)", lambda: from_recipe("cifar100/fitnet/resnet32x4-resnet8x4.yaml")),
        ("offline: crd (contrastive)", lambda: from_recipe("cifar100/crd/resnet32x4-resnet8x4.yaml",
                                                           methods={"crd": {"nce_k": bank}})),
        ("offline: kd, loader: device", lambda: {**kd, "dataset": {"loader": "device"}}),
        ("offline: kd, cached teacher", lambda: {**kd, "teacher": {**pair["teacher"], "cache": True}}),
        ("offline: kd, replayed teacher", lambda: {**kd, "teacher": {**pair["teacher"], "cache": "replay",
                                                                     "cache_dir": str(check.work / "replay0")}}),
        ("mutual: dml", lambda: {"regime": "mutual", "peers": [{"arch": student}, {"arch": student}],
                                 "loss": {"ce": 1.0, "kd": 1.0}, "methods": {"kd": {"T": 1.0}}}),
        ("double_student: dssrd", lambda: dssrd),
        ("double_student: dssrd, loader: device", lambda: {**dssrd, "dataset": {**dssrd["dataset"], "loader": "device"}}),
        ("self_supervised: byol", lambda: {**from_recipe("cifar100/self_supervised/byol_imix_resnet34.yaml"),
                                           "student": {"arch": a.ssl_arch}, "teacher": {}}),
        ("linear_probe", lambda: {**from_recipe("cifar100/linear_eval/cifar100.yaml"), "teacher": {},
                                  "student": {"checkpoint": str(check.work / "runs" / "self_supervised_byol")}}),
    ]


def dssrd_images(a) -> int:
    """The double student's images: enough for proto's clusters to exceed a batch (its draw then stays on the
    device; with fewer, DS-SRD's "at most all free clusters" needs their count on the host)."""
    return max(a.steps * a.batch, 50 * a.batch)


def check_regimes(check: Check) -> None:
    a = check.args
    for name, build in regime_cases(check):
        images = dssrd_images(a) if name.startswith("double_student") else a.steps * a.batch
        data = check.recipe(build(), images=images, batch=a.batch,
                            loader=build().get("dataset", {}).get("loader", "torch"))
        try:
            if "replayed" in name:  # the steady state: a first run records the epoch, the counted one replays it
                check.run(f"{name} (record)", data)
            r = check.run(name, data, count_syncs=True)
        except Exception as err:  # noqa: BLE001 - every case gets its row; the error is the finding
            check.rows["regimes"].append(f"| {name} | - | - | - | FAILED: {type(err).__name__}: "
                                         f"{str(err).splitlines()[0][:150]} |")
            check.notes.append(f"{name}:\n```\n{traceback.format_exc()[-2000:]}\n```")
            continue
        later = r["syncs"][1:]  # the first step allocates and tunes (cudnn benchmark, banks)
        total = sum(s["total"] for s in later)
        calls = {}
        for s in later:
            for key, value in s.items():
                if key != "total":
                    calls[key] = calls.get(key, 0) + value
        where = ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "-"
        status = "ok" if total == 0 else "SYNCS"
        check.rows["regimes"].append(f"| {name} | {r['steps']} | {total} ({where}) | {r['select']} {r['best']:.2f} | "
                                     f"{status} |")
        print(check.rows["regimes"][-1], flush=True)


def check_step(check: Check, compiled_only: bool = False) -> None:
    """KD step time against the limit (student step + teacher inference): default and plain, or (`compiled_only`,
    the `compiled` section) compiled; no setting starts past the budget."""
    a = check.args
    device = check.device
    info = image_info("cifar100", 100, 3, 32, (0.5,) * 3, (0.25,) * 3)
    targets = torch.randint(0, 100, (50_000,))
    settings = dict(step_overhead.SETTINGS)
    if a.autotune:
        settings["compiled (max-autotune-no-cudagraphs)"] = {**settings["compiled"],
                                                             "compile_mode": "max-autotune-no-cudagraphs"}
    settings = {k: v for k, v in settings.items() if bool(v.get("compile")) == compiled_only}
    section = "compiled" if compiled_only else "step"
    teacher_file = check.teacher(a.teacher)
    for batch in a.batches:
        args = argparse.Namespace(batch=batch, classes=100, student=a.student, teacher=a.teacher)
        for setting, options in settings.items():
            if time.perf_counter() - check.started > 60 * a.budget_min:
                check.notes.append(f"{section}: batch {batch} {setting} not run, the check had used its "
                                   f"{a.budget_min} min")
                continue
            precision = Precision(resolve_precision(options["precision"], device), device)
            engine = step_overhead.engine_section(options, precision)
            compiled, mode = options.get("compile", False), options.get("compile_mode")
            teacher_model = create_model(a.teacher, num_classes=100)
            parts = {
                "student": step_overhead.regime_step(args, info, targets, engine, precision, {"ce": 1.0}, None,
                                                     compiled=compiled, device=device, compile_mode=mode),
                "teacher": step_overhead.teacher_inference(teacher_model, args, options, precision, device),
                "kd": step_overhead.regime_step(args, info, targets, engine, precision, {"ce": 0.1, "kd": 0.9},
                                                teacher_file, compiled=compiled, device=device, compile_mode=mode),
            }
            ms, peak = {}, {}
            for part, fn in parts.items():
                ms[part], peak[part] = time_steps(fn, device, a.warmup + (10 if compiled else 0), a.repeats)
            limit = ms["student"] + ms["teacher"]
            if setting == "default":
                check.default_ratio[batch] = ms["kd"] / limit
            mem = f"{peak['kd']:.0f}" if peak["kd"] is not None else "-"
            check.rows[section].append(f"| {batch} | {setting} ({precision.name}) | {ms['student']:.2f} | "
                                      f"{ms['teacher']:.2f} | {limit:.2f} | {ms['kd']:.2f} | {ms['kd'] / limit:.2f}x | "
                                      f"{mem} |")
            print(check.rows[section][-1], flush=True)
            parts.clear()
            torch._dynamo.reset()


def time_steps(fn: Callable, device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """(mean ms per call over `repeats` calls queued back to back, peak MB of device memory or None on the CPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    elapsed = (time.perf_counter() - started) / repeats * 1000
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return elapsed, peak


def check_epoch(check: Check) -> None:
    """A KD epoch of all `--images` images per loader (the second of two); the 240-epoch projection."""
    a = check.args
    kd = {"loss": {"ce": 0.1, "kd": 0.9}, "student": {"arch": a.student},
          "teacher": {"checkpoint": str(check.teacher(a.teacher))}}
    for loader, workers in (("device", 0), ("torch", a.workers)):
        r = check.run(f"epoch {loader}", check.recipe(kd, images=a.images, batch=a.epoch_batch, loader=loader,
                                                      workers=workers, epochs=2))
        check.epoch[loader] = r
        projected = 240 * (r["epoch_s"] + r["eval_s"]) / 60
        label = "loader: device" if loader == "device" else f"PyTorch loader, {workers} workers"
        check.rows["epoch"].append(f"| KD, live teacher | {label} | {a.images:,} | {r['epoch_s']:.2f} | "
                                   f"{r['eval_s']:.2f} | {projected:.1f} |")
        print(check.rows["epoch"][-1], flush=True)


def check_replay(check: Check) -> None:
    """The replayed teacher's epoch (recorded by a first run) against the student's epoch alone (second epochs)."""
    a = check.args
    cache = {"checkpoint": str(check.teacher(a.teacher)), "cache": "replay", "cache_dir": str(check.work / "replay")}
    kd = {"loss": {"ce": 0.1, "kd": 0.9}, "student": {"arch": a.student}, "teacher": cache}
    runs = {}
    for name, data in (("record", kd), ("replay", kd),
                       ("student", {"loss": {"ce": 1.0}, "student": {"arch": a.student}})):
        runs[name] = check.run(f"replay {name}", check.recipe(data, images=a.images, batch=a.epoch_batch,
                                                              workers=a.workers, epochs=2))
    for name, r in runs.items():
        projected = 240 * (r["epoch_s"] + r["eval_s"]) / 60
        check.replayed[name] = r
        ratio = r["epoch_s"] / runs["student"]["epoch_s"]
        check.rows["replay"].append(f"| {name} | {r['epoch_s']:.2f} | {ratio:.2f}x | {projected:.1f} |")
        print(check.rows["replay"][-1], flush=True)


def check_dali(check: Check) -> None:
    from kdzoo.data.dali import DaliStream, dali_unavailable

    folder = check.work / "jpeg"
    write_jpeg_folder(folder, per_class=max(2 * check.args.batch, 16))
    data = {"loss": {"ce": 1.0}, "student": {"arch": check.args.student}, "epochs": 1, "seed": 0,
            "dataset": {"name": "imagefolder", "root": str(folder), "image_size": 32, "loader": "dali",
                        "batch_size": check.args.batch, "num_workers": min(4, check.args.workers)},
            "engine": {"progress": False, "tensorboard": False, "device": check.args.device}}
    engine = make_engine(config_from_data(data), check.work / "runs" / "dali", quiet=True, log=lambda line: None)
    served = isinstance(engine.program.data["train"], DaliStream)
    engine.fit()
    summary = json.loads((check.work / "runs" / "dali" / "summary.json").read_text())
    note = f"DALI read train and test; {summary['selected_by']} {summary['best_value']:.2f}" if served else \
        f"the PyTorch loader ran it: {dali_unavailable(check.device)}"
    check.rows["dali"].append(f"| {'yes' if served else 'no'} | {note} |")
    print(check.rows["dali"][-1], flush=True)


def environment(device: torch.device) -> str:
    parts = [f"torch {torch.__version__}", f"Python {platform.python_version()}", f"CPU {cpu_model()}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = "unknown"
        parts = [f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)", f"driver {driver}",
                 f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}", *parts]
    return ", ".join(parts)


def report(check: Check, sections: list[str], elapsed: float) -> str:
    a = check.args
    head = [f"Command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`", "",
            f"{environment(check.device)}; {time.strftime('%Y-%m-%d')}; the whole check took {elapsed / 60:.1f} min.",
            f"Synthetic CIFAR-100-shaped data (random pixels and labels in torchvision's pickles), random-weight "
            f"teachers; student {a.student}, teacher {a.teacher}."]
    tables = {
        "regimes": ("Every regime: one epoch of the steps below, one evaluation; host synchronisations counted "
                    "inside each step after the first",
                    "| case | steps | host syncs in steps 2.. (calls) | best eval | status |\n|---|---|---|---|---|"),
        "step": (f"KD step, mean of {a.repeats} steps queued back to back; limit = student step + teacher "
                 "inference, each timed alone; peak memory of the three programs held together", STEP_HEADER),
        "epoch": (f"A KD epoch, the second of a 2-epoch run (batch {a.epoch_batch}); the projection is 240 x "
                  "(epoch + one evaluation)",
                  "| run | loader | images | epoch s | evaluation s | 240 epochs, min |\n|---|---|---|---|---|---|"),
        "replay": (f"The replayed teacher (batch {a.epoch_batch}, PyTorch loader): its second epoch against the "
                   "student's alone", "| run | epoch s | vs student | 240 epochs, min |\n|---|---|---|---|"),
        "dali": ("DALI on a synthetic JPEG image folder", "| DALI served the run | note |\n|---|---|"),
        "compiled": ("The KD step compiled (engine.compile; after warm-up steps that pay the compile), as above",
                     STEP_HEADER),
    }
    out = head
    for section in sections:
        title, header = tables[section]
        out += ["", f"**{title}**", "", header, *check.rows[section]]
    if check.device.type == "cuda":
        out += goals(check)
    if check.notes:
        out += ["", "**Failures, and sections not run**", "", *check.notes]
    return "\n".join(out) + "\n"


def goals(check: Check) -> list[str]:
    """Issue 27's goals against what this run measured: the 240-epoch CIFAR-100 KD time (live teacher, replay
    cache) next to RepDistiller's, and the default KD step's ratio to its limit."""
    lines = []
    if check.epoch:
        live = min(check.epoch.values(), key=lambda r: r["epoch_s"])
        minutes = 240 * (live["epoch_s"] + live["eval_s"]) / 60
        lines.append(f"- 240 epochs with the live teacher: {minutes:.1f} min (goal under 30: "
                     f"{'met' if minutes < 30 else 'not met'})")
    if "replay" in check.replayed:
        r = check.replayed["replay"]
        minutes = 240 * (r["epoch_s"] + r["eval_s"]) / 60
        lines.append(f"- 240 epochs from the replay cache: {minutes:.1f} min (goal under 15: "
                     f"{'met' if minutes < 15 else 'not met'})")
    for batch, ratio in check.default_ratio.items():
        lines.append(f"- default KD step at batch {batch}: {ratio:.2f}x its limit (goal within 1.2x: "
                     f"{'met' if ratio <= 1.2 else 'not met'})")
    if not lines:
        return []
    return ["", f"**Goals** (CIFAR-100 KD, {check.args.teacher} -> {check.args.student}, this GPU; RepDistiller's "
                f"240 epochs on one V100: about {240 * REPDISTILLER_EPOCH_MIN / 60:.0f} h, ~1 min per epoch)", "",
            *lines]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (the tests' CPU run)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--work", help="working folder (default: a new temporary one)")
    parser.add_argument("--out", help="also write the report here")
    parser.add_argument("--autotune", action="store_true", help="also time compile mode max-autotune-no-cudagraphs")
    parser.add_argument("--budget-min", type=float, default=8.0,
                        help="start no section after this many minutes (the report says which were left out)")
    args = parser.parse_args(argv)
    full = dict(steps=20, batch=64, batches=[64, 256], repeats=50, warmup=5, images=50_000, test_images=10_000,
                epoch_batch=64, workers=16, student="resnet8x4", teacher="resnet32x4", ssl_arch="ResNet34")
    quick = dict(steps=3, batch=8, batches=[8], repeats=2, warmup=1, images=400, test_images=32, epoch_batch=16,
                 workers=0, student="resnet8", teacher="resnet8x4", ssl_arch="resnet8")
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    check = Check(args)
    write_cifar100(check.data, args.images, args.test_images)
    sections = args.sections.split(",")
    started = time.perf_counter()
    steps = {"regimes": check_regimes, "step": check_step, "epoch": check_epoch, "replay": check_replay,
             "dali": check_dali, "compiled": partial(check_step, compiled_only=True)}
    done: list[str] = []
    for section in sections:
        elapsed = time.perf_counter() - started
        if elapsed > 60 * args.budget_min:  # a device lease is short: report what ran rather than nothing
            check.notes.append(f"{section}: not run, the check had used its {args.budget_min} min")
            continue
        print(f"== {section} (at {elapsed / 60:.1f} min)", flush=True)
        try:
            steps[section](check)
        except Exception as err:  # noqa: BLE001 - a failed section is reported; the others still run
            check.rows[section].append(f"| FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]} |")
            check.notes.append(f"{section}:\n```\n{traceback.format_exc()[-3000:]}\n```")
        done.append(section)
        if args.out:  # after every section: a run stopped at its time limit still leaves its table
            Path(args.out).write_text(report(check, done, time.perf_counter() - started))
    text = report(check, done, time.perf_counter() - started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    failed = any("FAILED" in row or "SYNCS" in row for rows in check.rows.values() for row in rows)
    return 1 if failed or len(done) < len(sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
