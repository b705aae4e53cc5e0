"""The engine: executes a program. Devices, precision, DDP, the run folder, checkpoints, resume, the summary.

It knows no method, regime, model or stream by name: `build(BuildContext)` (a regime's) gives it a Program,
and `engine/loop.py` runs the program's phases over their streams.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from kdzoo.checkpoints.format import CHECKPOINT_DIR
from kdzoo.checkpoints.run_folder import clear_run, open_run_folder
from kdzoo.checkpoints.store import CheckpointStore
from kdzoo.config import Config, config_to_yaml, to_dict
from kdzoo.core.dist import DistInfo, barrier
from kdzoo.engine.device import Precision, resolve_device, resolve_precision
from kdzoo.engine.distributed import init_distributed, wrap_ddp
from kdzoo.engine.loop import PhaseRunner
from kdzoo.engine.recorder import Progress, RunRecorder
from kdzoo.engine.resume_rules import ResumeMismatch, check_resume_state
from kdzoo.engine.rng import seed_everything
from kdzoo.engine.run_log import RunLog, environment
from kdzoo.engine.signals import stop_on_sigterm
from kdzoo.engine.wandb_log import check_wandb_section, open_wandb
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.program import BuildContext, Program


def make_engine(cfg: Config, out: str | Path, **options) -> "Engine":
    """The engine that runs `cfg`'s regime (the one place that joins the regime registry and the engine)."""
    from kdzoo.regimes import REGIMES

    return Engine(cfg, out, build=REGIMES.get(cfg.regime).build, **options)


class Engine:
    def __init__(self, cfg: Config, out: str | Path, build: Callable[[BuildContext], Program], resume: bool = False,
                 quiet: bool = False, log=print):
        check_wandb_section(cfg.logging.wandb)
        self.cfg = cfg
        self.out = Path(out)
        self.quiet = quiet or not cfg.engine.progress
        self.log = log
        self.device = resolve_device(cfg.engine.device, _local_rank())
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
        if cfg.engine.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("engine.sync_bn: SyncBatchNorm runs on CUDA devices only (this run is on "
                                  f"{self.device.type}); leave it false")
            self.dist = replace(self.dist, sync_bn=True)
        self.precision = Precision(resolve_precision(cfg.engine.precision, self.device), self.device)
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        seed_everything(cfg.seed + self.dist.rank)

        self.store = CheckpointStore(self.out / CHECKPOINT_DIR)
        self.lock = open_run_folder(self.out, self.store, resume, main=self.dist.is_main)
        try:
            self.program = build(self._build_context())
            self.info = self.program.info
            if cfg.engine.compile:
                from kdzoo.engine.compile import compile_program

                compiled = compile_program(self.program, cfg.engine.compile_backend, cfg.engine.compile_mode)
                self.log(f"torch.compile ({cfg.engine.compile_backend}): {', '.join(compiled)}")
            self.program.use_runner(wrap_ddp(self.program.trainable, self.dist, self.device))
            for phase in self.program.phases:  # a stream no full batch fits fails now, before the folder is written
                self.program.data[phase.stream].loader(self.dist)
            self._start_run(resume)
        except BaseException:
            self.lock.abandon()  # a run refused while it was built leaves no folder behind
            raise

    def _build_context(self):
        return BuildContext(cfg=self.cfg, device=self.device, dist=self.dist,
                            log=self.log if self.dist.is_main else (lambda _: None), out=self.out)

    def _start_run(self, resume: bool) -> None:
        cfg = self.cfg
        self.progress = Progress()
        resume_state: Optional[dict[str, Any]] = None
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
            resume_state = self.store.load_state()
            check_resume_state(resume_state, to_dict(cfg), to_dict(type(cfg)()), self.data_identity(),
                               self.dist.world_size)
            self.program.load_state_dict(resume_state["regime"])
            self.progress = Progress.from_state(resume_state["progress"])
            phase = self.program.phases[self.progress.phase]
            if phase.epochs < self.progress.epoch:
                raise ResumeMismatch(f"epochs: {phase.epochs} is fewer than the {self.progress.epoch} epochs of "
                                     f"{phase.name} this run has already trained")
        self.run = RunLog(self.out, active=self.dist.is_main, tensorboard=cfg.engine.tensorboard)
        if self.dist.is_main:
            self.run.extra = open_wandb(cfg.logging.wandb, self.out, cfg.name, to_dict(cfg), self.log)
        self.run.write_text("config.yaml", config_to_yaml(cfg))  # unchanged text is not rewritten
        if not resume:
            self.run.write_json("env.json", {**environment(), "device": str(self.device),
                                             "precision": self.precision.name,
                                             "world_size": self.dist.world_size})
        self.run.write_json("model.json", self.program.describe())
        self.recorder = RunRecorder(cfg, self.program, self.dist, self.store, self.run, self.progress, resume_state,
                                    self.data_identity(), self.log)

    def data_identity(self) -> dict[str, Any]:
        """What a moved dataset must still be for a resume to continue the same run."""
        main = self.program.data[self.program.phases[-1].stream]
        return {"name": self.info.name, "train_samples": len(main.dataset),
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
        runner = PhaseRunner(self.program, self.cfg, self.device, self.dist, self.precision, self.recorder,
                             quiet=self.quiet, log=self.log)
        for index, phase in enumerate(self.program.phases):
            if index >= self.progress.phase:
                runner.run(index, phase)
        summary_file = self.out / "summary.json"
        if runner.epochs_run == 0 and self.dist.is_main and summary_file.is_file():
            try:  # a finished run resumed again: report it as it was, rewrite nothing
                return json.loads(summary_file.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        final = self.program.phases[-1]
        last, report = self.progress.last, final.report
        best = self.progress.best
        summary = {
            "name": self.cfg.name, "dataset": self.info.name, "epochs": self.cfg.epochs, "seed": self.cfg.seed,
            "selected_by": final.select, "best_value": self.progress.best_value, "best_epoch": self.progress.best_epoch,
            "best_top1": best.get(f"{report}_top1"), "last_top1": last.get(f"{report}_top1"),
            "last_top5": last.get(f"{report}_top5"), "precision": self.precision.name,
            "world_size": self.dist.world_size, "wall_time_s": round(time.time() - started, 2),
            **self.program.describe(),
        }
        if final.select != f"{report}_top1":  # selected on one stream or metric, reported on another
            result = {"metric": f"{report}_top1", "value": best.get(f"{report}_top1"), "at": f"the best {final.select}",
                      "epoch": self.progress.best_epoch}
            summary.update(best_metrics=best, result=result)
        self.run.write_json("summary.json", summary)
        return summary


def end_of_run(summary: dict) -> str:
    """What a run selected on and what it reports, e.g. `best test_top1 93.10 (epoch 14), last test_top1 92.85`,
    `best val_top1 80.00 (epoch 9; test_top1 there 78.40)`, `best test_knn_top1 71.20 (epoch 5)`."""
    chosen = summary.get("selected_by", "test_top1")
    value = summary.get("best_value", summary.get("best_top1"))
    text = f"best {chosen} {_number(value)} (epoch {summary['best_epoch']}"
    reported = (summary.get("result") or {}).get("metric", chosen)
    if reported != chosen and summary.get("best_top1") is not None:
        text += f"; {reported} there {_number(summary['best_top1'])}"
    text += ")"
    if summary.get("last_top1") is not None:
        text += f", last {reported} {_number(summary['last_top1'])}"
    return text


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
