"""A run's record in its folder: the resolved config, the environment, metrics.jsonl and TensorBoard events
(the checkpoints are the store's, checkpoints/store.py; the folder's lock, checkpoints/run_folder.py)."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from kdzoo.checkpoints.format import CHECKPOINT_DIR
from kdzoo.core.atomic import atomic_write_text


def environment() -> dict[str, Any]:
    """Versions and hardware, saved with every run so that results can be traced."""
    import torchvision

    from kdzoo.version import __version__

    env = {
        "kdzoo": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
        "argv": sys.argv,
    }
    return env


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), e.g. to keep time ratios to runs on one machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunLog:
    """Writes a run's files; only the main process of a multi-process run creates one with `active=True`."""

    def __init__(self, path: str | Path, active: bool = True, tensorboard: bool = True):
        self.path = Path(path)
        self.active = active
        self.tensorboard = tensorboard
        self._writer = None  # opened at the first logged epoch: a no-op resume leaves tb/ as it was
        self.extra = None  # another logger with log(record, step) and close() (W&B)
        if active:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def write_text(self, name: str, text: str) -> None:
        """Atomically, and only when the text changes (a resumed run rewrites nothing it does not change)."""
        if not self.active:
            return
        path = self.path / name
        try:
            if path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(path, text)

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def log(self, record: dict[str, Any], step: int) -> None:
        """One line of metrics.jsonl, and the numeric values as TensorBoard scalars."""
        if not self.active:
            return
        record = {"time": time.time(), **record}
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"))
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "epoch", "step"):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self.extra is not None:
            self.extra.log(record, step)

    def truncate_metrics(self, keep_until_epoch: int, phase: str, later: tuple[str, ...] = ()) -> None:
        """On resume, drop metric lines logged after the checkpoint (they will be logged again): those of `phase`
        past `keep_until_epoch` and those of the `later` phases; and a torn last line that a kill in the middle
        of a write left behind."""
        path = self.path / "metrics.jsonl"
        if not self.active or not path.exists():
            return
        raw, kept = path.read_text(errors="replace"), []
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by a kill mid-write; the epoch it belonged to is logged again
            if not isinstance(rec, dict):
                continue
            if rec.get("phase") == phase and rec.get("epoch", 0) > keep_until_epoch or rec.get("phase") in later:
                continue
            kept.append(line)
        text = "".join(k + "\n" for k in kept)
        if text != raw:
            atomic_write_text(path, text)

    def close(self) -> None:
        if self.extra is not None:
            self.extra.close()
            self.extra = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
