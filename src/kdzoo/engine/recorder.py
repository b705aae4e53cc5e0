"""What the phase runner records a run through: where the run stands (Progress), the resume state it started from
(handed out once), the metrics log, and one atomic checkpoint of the artifacts and the whole resume state."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from kdzoo.checkpoints.store import CheckpointStore
from kdzoo.config import Config, to_dict
from kdzoo.core.dist import DistInfo, barrier, gather_objects
from kdzoo.engine.rng import rng_state
from kdzoo.engine.run_log import RunLog
from kdzoo.program import Phase, Program


@dataclass
class Progress:
    """Where a run stands; saved in the resume state. `best_value` is the best value of the phase's selection
    metric (`Phase.select`: test top-1 unless the program selects on val top-1, kNN top-1, the heads' top-1...)
    and `best` all metrics then."""

    phase: int = 0
    epoch: int = 0  # epochs of `phase` already completed
    best_value: float = -1.0
    best_epoch: int = -1
    last: dict = field(default_factory=dict)  # metrics of the latest evaluation
    best: dict = field(default_factory=dict)
    stopped: bool = False  # a controller ended `phase` early
    best_reported: bool = False  # the phase's at-best evaluators have run on its best weights

    @classmethod
    def from_state(cls, saved: dict[str, Any]) -> "Progress":
        """From a resume state, older ones included (`best_top1`, metrics not yet named by their stream)."""
        saved = dict(saved)
        if "best_top1" in saved:
            saved.setdefault("best_value", saved.pop("best_top1"))
        progress = cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        if "top1" in progress.last:
            progress.last = {f"test_{k}": v for k, v in progress.last.items() if k != "n"}
        return progress


class RunRecorder:
    def __init__(self, cfg: Config, program: Program, dist: DistInfo, store: CheckpointStore, run: RunLog,
                 progress: Progress, resume_state: Optional[dict[str, Any]], data_identity: dict[str, Any],
                 log: Callable[[str], None]):
        self.cfg, self.program, self.dist, self.store, self.run = cfg, program, dist, store, run
        self.progress, self._resume_state, self.data_identity, self.log = progress, resume_state, data_identity, log

    def take_resume_state(self) -> Optional[dict[str, Any]]:
        """The resume state the run started from, for the first phase that runs (None after, or for a fresh run)."""
        state, self._resume_state = self._resume_state, None
        return state

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        self.run.log(record, step=step)

    def checkpoint(self, phase: Phase, epoch: int, metrics: dict[str, float], improved: bool, optimizer,
                   controller, scaler, best_state: Optional[dict[str, Any]] = None) -> None:
        """The program's artifacts and the whole resume state, in one atomic commit (main process)."""
        rng_ranks = gather_objects(rng_state(), self.dist)  # each rank's own, so a resume continues each one
        if self.dist.is_main:
            cfg, info = self.cfg, self.program.info
            report = f"{phase.report}_"
            common = {
                "format": "kdzoo", "version": 1, "dataset": info.name, "dataset_root": cfg.dataset.root,
                "image_size": cfg.dataset.image_size, "input_shape": list(info.input_shape),
                "phase": phase.name, "epoch": epoch + 1, "run": cfg.name,
                **({"imports": list(cfg.imports)} if cfg.imports else {}),  # plugins that build its network
                "metrics": {k[len(report):]: v for k, v in metrics.items() if k.startswith(report)},
            }
            artifacts = [(name, a.module().state_dict(), {**a.meta(), **common})
                         for name, a in self.program.artifacts.items()]
            (_, weights, meta), extra = artifacts[0], {name: (w, m) for name, w, m in artifacts[1:]}
            state = {
                "progress": vars(self.progress).copy(), "regime": self.program.state_dict(),
                "optimizer": optimizer.state_dict(), "controller": controller.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_ranks[0],
                "rng_ranks": rng_ranks, "config": to_dict(cfg), "world_size": self.dist.world_size,
                "data": self.data_identity,
            }
            if best_state is not None:
                state["best_state"] = best_state
            self.store.save(weights, meta, state, improved, extra=extra)
        barrier(self.dist)
