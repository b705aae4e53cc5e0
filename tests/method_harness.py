"""Helpers for method tests: a real offline regime on random data, gradient routing, CLI runs on digits."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.checkpoints.format import save_weights
from kdzoo.config import config_from_data
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.data import image_info
from kdzoo.distillers.base import SetupContext
from kdzoo.engine.step import weighted_total
from kdzoo.models import create_model
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from kdzoo.program import BuildContext, DataStream, Program, Runtime
from kdzoo.regimes.offline import offline_program, train_stream_needs
from tests.conftest import CONFIGS, FAST, run_cli

CPU = torch.device("cpu")


def teacher_file(folder: Path, arch: str, num_classes: int = 10, in_channels: int = 3, seed: int = 0) -> Path:
    """A randomly initialised teacher saved as a kdzoo checkpoint."""
    torch.manual_seed(seed)
    path = Path(folder) / f"{arch}-{num_classes}-{in_channels}.safetensors"
    if not path.exists():
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
        save_weights(path, model.state_dict(), {"arch": arch, "num_classes": num_classes,
                                                "in_channels": in_channels, "dataset": "synthetic"})
    return path


class RandomImages(torch.utils.data.Dataset):
    """`n` random images with the given labels: a stand-in dataset for building programs."""

    def __init__(self, targets: torch.Tensor, shape: tuple[int, ...], info, with_index: bool = False, seed: int = 0):
        self.targets, self.shape, self.info, self.with_index = targets, shape, info, with_index
        self.seed = seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = torch.randn(*self.shape, generator=torch.Generator().manual_seed(self.seed + i))
        return (image, self.targets[i], i) if self.with_index else (image, self.targets[i])


class OfflineView:
    """The offline program as the method tests look at it: its student, teacher, bundle, methods and phases."""

    def __init__(self, program: Program, cfg, info):
        self.program, self.cfg, self.info = program, cfg, info

    @property
    def student(self) -> nn.Module:
        return self.program.models["student"].module

    @property
    def teacher(self):
        slot = self.program.models.get("teacher")
        return slot.features if slot is not None else None

    @property
    def bundle(self) -> nn.Module:
        return self.program.trainable

    @property
    def methods(self) -> dict:
        return {key.replace(":", "."): m for key, m in self.program.trainable.methods.items()}

    @property
    def train_targets(self) -> torch.Tensor:
        return self.program.data["train"].dataset.targets

    @property
    def needs_index(self) -> bool:
        return self.program.data["train"].dataset.with_index

    @property
    def drop_last(self) -> bool:
        return self.program.data["train"].drop_last

    def phases(self):
        return self.program.phases

    def train(self, mode: bool = True) -> None:
        self.program.train(mode)

    def make_batch(self, raw) -> Batch:
        return self.program.data["train"].batch(raw)

    def after_step(self, phase: str = "main") -> None:
        self.program.after_optimizer_step()
        next(p for p in self.program.phases if p.name == phase).after_step()

    def state_dict(self) -> dict:
        return self.program.state_dict()

    def eval_model(self) -> nn.Module:
        return self.program.artifacts["student"].module()

    def deploy_meta(self) -> dict:
        return self.program.artifacts["student"].meta()


def build_regime(folder: Path, student: str, teacher: Optional[str], loss: dict, methods: Optional[dict] = None,
                 num_classes: int = 10, in_channels: int = 3, size: int = 32, n_train: int = 200,
                 batch_size: int = 8, epochs: int = 10, seed: int = 0) -> OfflineView:
    """The offline program exactly as a run builds it, on synthetic streams."""
    data = {"student": {"arch": student}, "loss": loss, "methods": methods or {}, "epochs": epochs,
            "dataset": {"name": "cifar100", "batch_size": batch_size},
            "engine": {"precision": "fp32", "channels_last": False, "progress": False, "tensorboard": False}}
    if teacher is not None:
        data["teacher"] = {"checkpoint": str(teacher_file(folder, teacher, num_classes, in_channels))}
    cfg = config_from_data(data)
    info = image_info("synthetic", num_classes, in_channels, size, (0.0,) * in_channels, (1.0,) * in_channels)
    torch.manual_seed(seed)
    targets = torch.arange(n_train) % num_classes
    shape = info.input_shape
    needs = train_stream_needs(cfg)
    streams = {"train": DataStream(RandomImages(targets, shape, info, with_index=needs["needs_index"]), batch_size,
                                   train=True, drop_last=needs["drop_last"]),
               "test": DataStream(RandomImages(targets[:20], shape, info), batch_size),
               "probe": DataStream(RandomImages(targets, shape, info, with_index=True), batch_size)}
    ctx = BuildContext(cfg=cfg, device=CPU, dist=DistInfo())
    return OfflineView(offline_program(ctx, streams, info), cfg, info)


def random_batch(regime: OfflineView, batch_size: int = 8, seed: int = 1) -> Batch:
    stream = regime.program.data["train"]
    if stream.sampler_fn is not None:  # grouped batches (CKD, mixup): one real batch of the stream's groups
        torch.manual_seed(seed)
        return stream.batch(next(iter(stream.loader(DistInfo()))))
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *regime.info.input_shape, generator=g)
    n = len(regime.train_targets)
    index = torch.randperm(n, generator=g)[:batch_size]
    labels = regime.train_targets[index]
    raw = (images, labels, index) if regime.needs_index else (images, labels)
    return regime.program.data["train"].batch(raw)  # with the stream's batch transform, if any (rotate4)


def EpochRuntime(program: Program) -> Runtime:  # noqa: N802 - what the engine lends a program built here
    """What a phase's on_epoch_start gets from the engine (the program's loaders), for a program built here."""
    return Runtime(program, CPU)


def start_epoch(regime: OfflineView, epoch: int = 0) -> dict:
    """The main phase's epoch hook (per-epoch passes: proto's clustering)."""
    return regime.phases()[-1].on_epoch_start(epoch, EpochRuntime(regime.program))


def step_info(epoch: int = 0, epochs: int = 10, step: int = 0, steps_per_epoch: int = 10) -> StepInfo:
    return StepInfo(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch)


def backward_once(regime: OfflineView, batch: Batch, phase_index: int = -1, info: Optional[StepInfo] = None) -> dict:
    """One forward/backward of a phase (default: main) on `batch`; returns the raw terms."""
    phase = regime.phases()[phase_index]
    regime.train(True)
    for p in phase.params:
        p.grad = None
    terms = phase.step(batch, info or step_info())
    weighted_total(terms, phase.weights).backward()
    return terms


def assert_gradient_routing(regime: OfflineView, batch: Batch, phase_index: int = -1) -> dict:
    """Gradients reach the student and the method adapters, never the teacher; returns the terms."""
    terms = backward_once(regime, batch, phase_index)
    assert all(torch.isfinite(v).all() for v in terms.values()), terms
    assert regime.teacher is None or all(p.grad is None for p in regime.teacher.parameters())
    assert regime.teacher is None or not regime.teacher.training
    phase = regime.phases()[phase_index]
    missing = [n for n, p in regime.bundle.named_parameters() if p.requires_grad and
               any(p is q for q in phase.params) and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    return terms


def run_digits(method_recipe: str, teacher_run: Path, out: Path, *overrides: str) -> dict:
    """One short epoch of a digits recipe through the CLI; returns the last metrics line."""
    code = run_cli("distill", "-c", CONFIGS / "digits" / f"{method_recipe}.yaml", "--out", out, "epochs=1",
                   f"teacher.checkpoint={teacher_run}", *FAST, *overrides)
    assert code == 0, f"{method_recipe} failed"
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def probed_pair(student: str, teacher: str, size: int = 32, seed: int = 0):
    """(student, teacher, student shapes, teacher shapes): two fresh 10-class RGB zoo models and their probed
    feature shapes at `size` x `size`."""
    torch.manual_seed(seed)
    s_model = create_model(student, num_classes=10, in_channels=3)
    t_model = create_model(teacher, num_classes=10, in_channels=3)
    example = torch.zeros(2, 3, size, size)
    return s_model, t_model, probe_shapes(s_model, None, example), probe_shapes(t_model, None, example)


def setup_context(s: Features, t: Features, student: Optional[nn.Module] = None) -> SetupContext:
    """A SetupContext for building a method from feature shapes alone (10 classes, batch 8)."""
    return SetupContext(student=student or nn.Identity(), teacher=nn.Identity(), student_shapes=s,
                        teacher_shapes=t, train_targets=torch.zeros(10, dtype=torch.long),
                        batch_size=8)


def avg_pool_np(f: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of (B, C, H, H) to (B, C, size, size) for H a multiple of size, by loops."""
    b, c, h, _ = f.shape
    k = h // size
    out = np.zeros((b, c, size, size))
    for i, j, y, x in itertools.product(range(b), range(c), range(size), range(size)):
        out[i, j, y, x] = f[i, j, y * k:(y + 1) * k, x * k:(x + 1) * k].mean()
    return out


def pool_pair_np(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps average-pooled to the smaller one's spatial size."""
    size = min(a.shape[-1], b.shape[-1])
    return avg_pool_np(a, size), avg_pool_np(b, size)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two OpenMP threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
