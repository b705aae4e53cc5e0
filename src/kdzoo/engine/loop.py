"""Running a program's phases: per phase an optimizer and a controller; per epoch the phase's hook, its stream
once through `train_step`, its evaluators, the controller's decision and a checkpoint of everything."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from kdzoo.config import Config
from kdzoo.core.batch import StepInfo
from kdzoo.core.dist import DistInfo, broadcast_unsynced_buffers
from kdzoo.data.loaders import set_loader_epoch
from kdzoo.engine.device import Precision
from kdzoo.engine.recorder import RunRecorder
from kdzoo.engine.rng import set_rng_state
from kdzoo.engine.step import train_step
from kdzoo.errors import KdzooError
from kdzoo.program import Phase, Program, Runtime
from kdzoo.program.controllers import Controller, constant
from kdzoo.program.optim import build_optimizer


class NonFiniteLoss(KdzooError):
    """The loss became NaN or Inf; the run stops and `last` stays the last good checkpoint."""


class PhaseRunner:
    """Runs a program's phases on a device through a recorder; it knows the engine only through these."""

    def __init__(self, program: Program, cfg: Config, device: torch.device, dist: DistInfo, precision: Precision,
                 recorder: RunRecorder, quiet: bool = False, log: Callable[[str], None] = print):
        self.program, self.cfg, self.device, self.dist, self.precision = program, cfg, device, dist, precision
        self.recorder, self.progress, self.quiet, self.log = recorder, recorder.progress, quiet, log
        self.runtime = Runtime(program, device, dist, channels_last=cfg.engine.channels_last)
        self.epochs_run = 0
        self.best_state: Optional[dict[str, Any]] = None  # kept when a controller may reload it

    def run(self, index: int, phase: Phase) -> None:
        progress = self.progress
        stream = self.program.data[phase.stream]
        loader = stream.loader(self.dist)
        optimizer = (phase.make_optimizer or build_optimizer)(phase.params, self.cfg.optim,
                                                              self.cfg.optim.lr if phase.lr is None else phase.lr)
        controller: Controller = (phase.controller or constant(phase.epochs))(optimizer, len(loader))
        scaler = self.precision.scaler()
        start_epoch = 0
        state = self.recorder.take_resume_state()
        inside = state is not None and progress.phase == index  # resumed inside (or at the end of) this phase
        if state is not None:  # the first phase run after --resume
            ranks = state.get("rng_ranks") or [state["rng"]]
            set_rng_state(ranks[self.dist.rank] if self.dist.rank < len(ranks) else state["rng"])
            if inside:
                optimizer.load_state_dict(state["optimizer"])
                controller.load_state_dict(state.get("controller") or {"scheduler": state["scheduler"]})
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                self.best_state = state.get("best_state")
                start_epoch = phase.epochs if progress.stopped else progress.epoch
            later = tuple(p.name for p in self.program.phases[index + 1:])
            self.recorder.run.truncate_metrics(start_epoch, phase.name, later)
        if not inside and phase.evaluates:  # each evaluating phase selects its own best
            progress.best_value, progress.best_epoch, progress.best = -1.0, -1, {}
            self.best_state = None
        latest: dict[str, float] = {}  # the latest evaluation's metrics, stamped on every checkpoint after it
        for epoch in range(start_epoch, phase.epochs):
            self.runtime.epoch = epoch
            before = phase.on_epoch_start(epoch, self.runtime) if phase.on_epoch_start is not None else None
            set_loader_epoch(loader, epoch)
            record = {"phase": phase.name, "epoch": epoch + 1, **(before or {}),
                      **self._train_epoch(phase, epoch, loader, stream, optimizer, controller, scaler)}
            metrics, improved, stop = latest, False, False
            if phase.evaluates and self._evaluates_after(epoch, phase):
                metrics = latest = {}
                for evaluator in phase.evaluators:
                    metrics.update(evaluator(self.runtime))
                if phase.select not in metrics:
                    raise KdzooError(f"phase {phase.name}: its evaluators gave no {phase.select!r} "
                                     f"(they gave {', '.join(metrics)})")
                improved = progress.best_epoch < 0 or metrics[phase.select] > progress.best_value
                record.update(metrics)
                progress.last = metrics
                if improved:
                    progress.best_value, progress.best_epoch, progress.best = metrics[phase.select], epoch + 1, metrics
                    progress.best_reported = False
                    if controller.wants_best_state or phase.at_best:
                        self.best_state = self.program.snapshot()
                decision = controller.after_eval(metrics, improved)
                if decision.reload_best and self.best_state is not None:
                    self.program.load_state_dict(self.best_state)
                    record["reloaded_best"] = progress.best_epoch
                stop = decision.stop
            broadcast_unsynced_buffers(self.program.trainable, self.dist)  # every rank ends the epoch as rank 0
            progress.phase, progress.epoch, progress.stopped = index, epoch + 1, stop
            self.recorder.log_metrics(record, step=epoch + 1)  # before the checkpoint: a resume drops lines past it
            self.recorder.checkpoint(phase, epoch, metrics, improved, optimizer, controller, scaler, self.best_state)
            self.epochs_run += 1
            self._print_epoch(phase, epoch, record)
            if stop:
                self.log(f"{phase.name}: stopped by its controller after epoch {epoch + 1}")
                break
        if phase.at_best and self.best_state is not None and not progress.best_reported:
            self._report_at_best(phase, optimizer, controller, scaler, latest)

    def _evaluates_after(self, epoch: int, phase: Phase) -> bool:
        """Every eval_every epochs from (0-based) epoch eval_start on, and after the last; best selection sees
        only these epochs."""
        engine = self.cfg.engine
        return epoch + 1 == phase.epochs or (epoch >= engine.eval_start and (epoch + 1) % engine.eval_every == 0)

    def _report_at_best(self, phase: Phase, optimizer, controller, scaler, latest) -> None:
        """The at-best evaluators on the phase's best weights (then the weights it ended with are put back)."""
        progress = self.progress
        ended = self.program.snapshot()
        self.program.load_state_dict(self.best_state)
        metrics: dict[str, float] = {}
        for evaluator in phase.at_best:
            metrics.update(evaluator(self.runtime))
        self.program.load_state_dict(ended)
        progress.best = {**progress.best, **metrics}
        progress.best_reported = True
        self.recorder.checkpoint(phase, progress.epoch - 1, latest, False, optimizer, controller, scaler,
                                 self.best_state)
        self.recorder.log_metrics({"phase": phase.name, "epoch": progress.best_epoch, "at_best": True, **metrics},
                                  step=progress.best_epoch)
        if self.dist.is_main:
            shown = f"{phase.report}_top1"
            text = f"  {shown} {metrics[shown]:.2f}" if shown in metrics else ""
            (tqdm.write if not self.quiet else self.log)(f"{phase.name}: at the best {phase.select} (epoch "
                                                   f"{progress.best_epoch}){text}")

    def _train_epoch(self, phase: Phase, epoch: int, loader, stream, optimizer, controller: Controller,
                     scaler) -> dict[str, float]:
        cfg, device = self.cfg, self.device
        self.program.train(True)
        steps = len(loader)
        check_every = 1 if device.type == "cpu" else max(cfg.engine.log_every, 1)
        sums: dict[str, torch.Tensor] = {}
        running = torch.zeros((), device=device)
        seen, started = 0, time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # the epoch's own peak
        bar = tqdm(loader, total=steps, desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                   disable=self.quiet or not self.dist.is_main, leave=False, dynamic_ncols=True)
        for i, raw in enumerate(bar):
            total, terms, size = self.one_step(phase, epoch, i, steps, raw, stream, optimizer, controller, scaler,
                                               sums)
            running = running + total
            seen += size
            # the one host read of the step loop: every log interval on a GPU (each step on the CPU, where it costs
            # nothing), so queued kernels are not waited for each step
            if (i + 1) % check_every == 0 or i + 1 == steps:
                if not torch.isfinite(running):
                    raise NonFiniteLoss(self._nan_message(phase, epoch, i, terms))
                if not bar.disable:
                    rate = seen * self.dist.world_size / max(time.time() - started, 1e-9)
                    bar.set_postfix(loss=f"{running.item() / (i + 1):.4f}", img_s=f"{rate:.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's queued kernels belong to its time
        elapsed = time.time() - started
        stats = {f"train_{k}": (v / steps).item() for k, v in sums.items()}
        stats["train_loss"] = running.item() / steps
        stats["lr"] = optimizer.param_groups[0]["lr"]
        stats["epoch_time_s"] = round(elapsed, 3)
        stats["images_per_s"] = round(seen * self.dist.world_size / max(elapsed, 1e-9), 1)
        stats.update(peak_memory(device))
        return stats

    def one_step(self, phase: Phase, epoch: int, i: int, steps: int, raw, stream, optimizer, controller: Controller,
                 scaler, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Step i of an epoch, all on the device (no host read: benchmarks/gpu_check.py counts them here): the
        batch, the optimizer step, the per-step hooks; the terms are added to `sums`. (loss, terms, batch size)."""
        batch = stream.batch(raw)
        info = StepInfo(epoch=epoch, epochs=phase.epochs, step=epoch * steps + i, steps_per_epoch=steps)
        total, terms = train_step(phase, batch, info, optimizer, self.precision, scaler, self.cfg.optim.grad_clip)
        controller.after_step()
        self.program.after_optimizer_step()
        if phase.after_step is not None:
            phase.after_step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        return total, terms, batch.size

    def _nan_message(self, phase: Phase, epoch: int, i: int, terms: dict[str, torch.Tensor]) -> str:
        values = ", ".join(f"{k}={v.detach().float().item():.4g}" for k, v in terms.items())
        last = self.recorder.store.weights_path("last")
        kept = f"; last good checkpoint: {last}" if last is not None else "; no checkpoint was written"
        return (f"loss became non-finite in {phase.name} epoch {epoch + 1}, step {i + 1} ({values}); "
                f"stopping{kept}")

    def _print_epoch(self, phase: Phase, epoch: int, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        parts = [f"{phase.name} epoch {epoch + 1}/{phase.epochs}", f"loss {record['train_loss']:.4f}"]
        shown = f"{phase.report}_top1"
        if shown in record:
            parts.append(f"top1 {record[shown]:.2f}")
        if phase.select != shown and phase.select in record:
            parts.append(f"{phase.select} {record[phase.select]:.2f}")
        if shown in record or phase.select in record:
            parts.append(f"best {self.progress.best_value:.2f}")
        if "reloaded_best" in record:
            parts.append(f"plateau: weights of epoch {record['reloaded_best']} reloaded")
        parts.append(f"{record['epoch_time_s']:.1f}s")
        (tqdm.write if not self.quiet else self.log)("  ".join(parts))


def peak_memory(device: torch.device) -> dict[str, float]:
    """peak_rss_mb: the process's peak resident memory so far (getrusage); on a GPU also peak_cuda_mb, the
    epoch's peak of torch.cuda.max_memory_allocated."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": round(rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out
