"""The engine: the loop around a regime. Epochs, schedules, precision, DDP, evaluation, checkpoints, resume.

It knows neither methods nor regimes by name: a regime gives it phases (parameters, a step returning named loss
terms, the terms' weights) and the network to evaluate.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from kdzoo.config import Config, config_to_yaml, to_dict
from kdzoo.data import build_dataset, make_loader, set_loader_epoch, stratified_subset, subset
from kdzoo.distillers.base import StepInfo
from kdzoo.engine.checkpoint import CHECKPOINT_DIR
from kdzoo.engine.checkpoint_store import CheckpointStore
from kdzoo.engine.device import Precision, resolve_device, resolve_precision
from kdzoo.engine.distributed import DistInfo, barrier, broadcast_buffers, init_distributed
from kdzoo.engine.evaluate import evaluate
from kdzoo.engine.optim import build_optimizer, build_scheduler
from kdzoo.engine.rng import rng_state, seed_everything, set_rng_state
from kdzoo.engine.step import train_step
from kdzoo.engine.resume_rules import ResumeMismatch, check_resume_state
from kdzoo.engine.run_dir import RunDir, environment
from kdzoo.engine.run_folder import clear_run, open_run_folder
from kdzoo.engine.signals import stop_on_sigterm
from kdzoo.errors import ConfigError, DatasetError, KdzooError
from kdzoo.regimes import REGIMES, Phase, RunContext


class NonFiniteLoss(KdzooError):
    """The loss became NaN or Inf; the run stops and `last` stays the last good checkpoint."""


@dataclass
class Progress:
    """Where a run stands; saved in the resume state."""

    phase: int = 0
    epoch: int = 0  # epochs of `phase` already completed
    best_top1: float = -1.0
    best_epoch: int = -1
    last: dict = field(default_factory=dict)  # metrics of the latest evaluation


class Engine:
    def __init__(self, cfg: Config, out: str | Path, resume: bool = False, quiet: bool = False,
                 log=print):
        self.cfg = cfg
        self.out = Path(out)
        self.quiet = quiet or not cfg.engine.progress
        self.log = log
        self.device = resolve_device(cfg.engine.device, _local_rank())
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
        self.precision = Precision(resolve_precision(cfg.engine.precision, self.device), self.device)
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        seed_everything(cfg.seed + self.dist.rank)

        self.store = CheckpointStore(self.out / CHECKPOINT_DIR)
        self.lock = open_run_folder(self.out, self.store, resume, main=self.dist.is_main)
        try:
            self._build()
            self._start_run(resume)
        except BaseException:
            self.lock.release()
            raise

    def _build(self) -> None:
        """Datasets, the regime's networks and the loaders."""
        cfg = self.cfg
        d = cfg.dataset
        train_set = build_dataset(d.name, "train", root=d.root, download=d.download, augment=d.augment,
                                  image_size=d.image_size)
        if d.subset is not None:
            size = int(d.subset) if d.subset > 1 else d.subset
            train_set = subset(train_set, stratified_subset(train_set.targets, size, seed=d.subset_seed))
        test_set = build_dataset(d.name, "test", root=d.root, download=d.download, augment=False,
                                 image_size=d.image_size)
        if len(test_set) == 0 or len(train_set) == 0:
            raise DatasetError(f"{d.name}: the {'test' if len(test_set) == 0 else 'training'} split is empty")
        # The shape a model sees is that of a real (test-transformed, so deterministic) sample.
        self.info = train_set.info.with_input_shape(test_set[0][0].shape)
        self.regime = REGIMES.get(cfg.regime)(RunContext(cfg=cfg, device=self.device, precision=self.precision,
                                                         dist=self.dist, info=self.info,
                                                         train_targets=train_set.targets))
        common = dict(seed=cfg.seed, num_workers=d.num_workers, distributed=self.dist.enabled,
                      rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_loader = make_loader(self.regime.wrap_train_dataset(train_set), batch_size=d.batch_size,
                                        train=True, drop_last=self.regime.drop_last, **common)
        self.test_loader = make_loader(test_set, batch_size=d.eval_batch_size, train=False, **common)
        if len(self.train_loader) == 0:
            raise ConfigError(f"dataset.batch_size: {d.batch_size} is larger than the {len(train_set)} training "
                              "samples and the last partial batch is dropped")

    def _start_run(self, resume: bool) -> None:
        cfg = self.cfg
        self.progress = Progress()
        self._resume_state: Optional[dict[str, Any]] = None
        self._epochs_run = 0
        if resume and not self.store.has_checkpoint():
            if self.store.weights_path("last") is not None or (self.out / "summary.json").is_file():
                raise KdzooError(f"{self.out} holds trained weights but no resume state, so it cannot be continued; "
                                 "evaluate or deploy it as it is, or train again in another folder")
            if self.dist.is_main:
                self.log(f"{self.out} holds no complete checkpoint: starting from scratch")
                clear_run(self.out)
            barrier(self.dist)
            resume = False
        if resume:
            self._resume_state = self.store.load_state()
            check_resume_state(self._resume_state, to_dict(cfg), to_dict(type(cfg)()), self._data_identity(),
                               self.dist.world_size)
            self.regime.load_state_dict(self._resume_state["regime"])
            self.progress = Progress(**self._resume_state["progress"])
            phase = self.regime.phases()[self.progress.phase]
            if phase.epochs < self.progress.epoch:
                raise ResumeMismatch(f"epochs: {phase.epochs} is fewer than the {self.progress.epoch} epochs of "
                                     f"{phase.name} this run has already trained")
        self.run = RunDir(self.out, active=self.dist.is_main, tensorboard=cfg.engine.tensorboard)
        self.run.write_text("config.yaml", config_to_yaml(cfg))  # unchanged text is not rewritten
        if not resume:
            self.run.write_json("env.json", {**environment(), "device": str(self.device),
                                             "precision": self.precision.name,
                                             "world_size": self.dist.world_size})
        self.run.write_json("model.json", self.regime.describe())

    def _data_identity(self) -> dict[str, Any]:
        """What a moved dataset must still be for a resume to continue the same run."""
        return {"name": self.info.name, "train_samples": len(self.train_loader.dataset),
                "input_shape": list(self.info.input_shape)}

    def close(self) -> None:
        """Release the run folder (`fit` does at its end; for an Engine that is built but never fitted)."""
        if hasattr(self, "run"):
            self.run.close()
        self.lock.release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train every phase not yet done; the folder stays locked until this returns or raises."""
        try:
            with stop_on_sigterm():
                return self._fit()
        except KeyboardInterrupt as stop:
            if self.dist.is_main:
                kept = "the last checkpoint is intact" if self.store.has_checkpoint() else "no checkpoint yet"
                self.log(f"{self.out}: stopped by {stop.args[0] if stop.args else 'Ctrl-C'}; {kept}; "
                         f"continue with --resume {self.out}")
            raise
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        started = time.time()
        for index, phase in enumerate(self.regime.phases()):
            if index >= self.progress.phase:
                self._run_phase(index, phase)
        summary_file = self.out / "summary.json"
        if self._epochs_run == 0 and self.dist.is_main and summary_file.is_file():
            try:  # a finished run resumed again: report it as it was, rewrite nothing
                return json.loads(summary_file.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        last_metrics = self.progress.last
        summary = {
            "name": self.cfg.name, "dataset": self.info.name, "epochs": self.cfg.epochs, "seed": self.cfg.seed,
            "best_top1": self.progress.best_top1, "best_epoch": self.progress.best_epoch,
            "last_top1": last_metrics.get("top1"), "last_top5": last_metrics.get("top5"),
            "precision": self.precision.name, "world_size": self.dist.world_size,
            "wall_time_s": round(time.time() - started, 2), **self.regime.describe(),
        }
        self.run.write_json("summary.json", summary)
        return summary

    def _run_phase(self, index: int, phase: Phase) -> None:
        cfg = self.cfg
        optimizer = build_optimizer(phase.params, cfg.optim, lr=phase.lr)
        steps_per_epoch = len(self.train_loader)
        schedule = cfg.schedule if phase.schedule else type(cfg.schedule)(name="constant")
        scheduler = build_scheduler(optimizer, schedule, phase.epochs, steps_per_epoch)
        scaler = self.precision.scaler()
        start_epoch = 0
        state = self._resume_state
        if state is not None:  # the first phase run after --resume
            set_rng_state(state["rng"])
            if self.progress.phase == index:  # the checkpoint was taken inside (or at the end of) this phase
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                start_epoch = self.progress.epoch
            self.run.truncate_metrics(start_epoch, phase.name)
        metrics: dict[str, float] = {}
        for epoch in range(start_epoch, phase.epochs):
            self.regime.on_epoch_start(phase.name, epoch)
            set_loader_epoch(self.train_loader, epoch)
            train_stats = self._train_epoch(phase, epoch, optimizer, scheduler, scaler)
            record = {"phase": phase.name, "epoch": epoch + 1, **train_stats}
            if phase.evaluate and ((epoch + 1) % cfg.engine.eval_every == 0 or epoch + 1 == phase.epochs):
                model = self.regime.eval_model()
                broadcast_buffers(model, self.dist)
                metrics = evaluate(model, self.test_loader, self.device, self.dist, cfg.engine.channels_last)
                record.update({f"test_{k}": v for k, v in metrics.items() if k != "n"})
                self.progress.last = metrics
                improved = metrics["top1"] > self.progress.best_top1
                if improved:
                    self.progress.best_top1, self.progress.best_epoch = metrics["top1"], epoch + 1
            else:
                improved = False
            self.progress.phase, self.progress.epoch = index, epoch + 1
            self.run.log(record, step=epoch + 1)  # before the checkpoint: a resume drops lines past it
            self._save(phase, epoch, metrics, improved, optimizer, scheduler, scaler, index)
            self._epochs_run += 1
            self._print_epoch(phase, epoch, record)
        self._resume_state = None

    def _train_epoch(self, phase: Phase, epoch: int, optimizer, scheduler, scaler) -> dict[str, float]:
        cfg = self.cfg
        self.regime.train(True)
        steps = len(self.train_loader)
        check_every = 1 if self.device.type == "cpu" else max(cfg.engine.log_every, 1)
        sums: dict[str, torch.Tensor] = {}
        running = torch.zeros((), device=self.device)
        seen, started = 0, time.time()
        bar = tqdm(self.train_loader, total=steps, desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                   disable=self.quiet or not self.dist.is_main, leave=False, dynamic_ncols=True)
        for i, raw in enumerate(bar):
            batch = self.regime.make_batch(raw)
            info = StepInfo(epoch=epoch, epochs=phase.epochs, step=epoch * steps + i, steps_per_epoch=steps)
            total, terms = train_step(phase, batch, info, optimizer, self.precision, scaler, cfg.optim.grad_clip)
            running = running + total
            if (i + 1) % check_every == 0 or i + 1 == steps:
                if not torch.isfinite(running):
                    raise NonFiniteLoss(self._nan_message(phase, epoch, i, terms))
            scheduler.step()
            self.regime.after_step(phase.name)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
            seen += batch.size
            if not bar.disable and (i % max(cfg.engine.log_every // 5, 1) == 0 or i + 1 == steps):
                rate = seen * self.dist.world_size / max(time.time() - started, 1e-9)
                bar.set_postfix(loss=f"{running.item() / (i + 1):.4f}", img_s=f"{rate:.0f}")
        elapsed = time.time() - started
        stats = {f"train_{k}": (v / steps).item() for k, v in sums.items()}
        stats["train_loss"] = running.item() / steps
        stats["lr"] = optimizer.param_groups[0]["lr"]
        stats["epoch_time_s"] = round(elapsed, 3)
        stats["images_per_s"] = round(seen * self.dist.world_size / max(elapsed, 1e-9), 1)
        return stats

    def _nan_message(self, phase: Phase, epoch: int, i: int, terms: dict[str, torch.Tensor]) -> str:
        values = ", ".join(f"{k}={v.detach().float().item():.4g}" for k, v in terms.items())
        last = self.store.weights_path("last")
        kept = f"; last good checkpoint: {last}" if last is not None else "; no checkpoint was written"
        return (f"loss became non-finite in {phase.name} epoch {epoch + 1}, step {i + 1} ({values}); "
                f"stopping{kept}")

    def _save(self, phase: Phase, epoch: int, metrics: dict[str, float], improved: bool, optimizer, scheduler,
              scaler, index: int) -> None:
        if self.dist.is_main:
            meta = {
                "format": "kdzoo", "version": 1, **self.regime.deploy_meta(), "dataset": self.info.name,
                "dataset_root": self.cfg.dataset.root, "image_size": self.cfg.dataset.image_size,
                "input_shape": list(self.info.input_shape),
                "phase": phase.name, "epoch": epoch + 1, "metrics": metrics, "run": self.cfg.name,
            }
            weights = self.regime.eval_model().state_dict()
            self.store.save(weights, meta, {
                "progress": vars(self.progress).copy(), "regime": self.regime.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
                "config": to_dict(self.cfg), "world_size": self.dist.world_size, "data": self._data_identity(),
            }, improved)
        barrier(self.dist)

    def _print_epoch(self, phase: Phase, epoch: int, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        parts = [f"{phase.name} epoch {epoch + 1}/{phase.epochs}", f"loss {record['train_loss']:.4f}"]
        if "test_top1" in record:
            parts.append(f"top1 {record['test_top1']:.2f}")
            parts.append(f"best {self.progress.best_top1:.2f}")
        parts.append(f"{record['epoch_time_s']:.1f}s")
        (tqdm.write if not self.quiet else self.log)("  ".join(parts))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
