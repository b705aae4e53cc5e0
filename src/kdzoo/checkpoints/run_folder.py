"""Who may write a run folder: one process at a time (an exclusive lock), and never over another run's files."""
from __future__ import annotations

import os
import shutil
import weakref
from pathlib import Path
from typing import Optional

from kdzoo.errors import KdzooError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "env.json", "model.json", "metrics.jsonl", "summary.json", "wandb_id.txt")
RUN_DIRS = ("checkpoints", "tb")  # kept free of torch imports: the CLI checks folders before loading torch


def check_out_path(path: Path) -> None:
    """A run folder must be a folder: not an existing file, nor under one."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"is under {part}, which is a file"
            raise KdzooError(f"run folder {path} {where}; choose another --out")


def holds_run(path: Path) -> bool:
    """True when `path` holds files of a kdzoo run (metrics, config, checkpoints)."""
    if not path.is_dir():
        return False
    if any((path / name).exists() for name in RUN_FILES):
        return True
    return any((path / name).is_dir() and any((path / name).iterdir()) for name in RUN_DIRS)


def refuse_existing_run(path: Path, what: str, instead: str = "") -> None:
    """`instead`: what to do about it (default: the CLI's options)."""
    check_out_path(path)
    if holds_run(path):
        instead = instead or f"use another --out (or --resume {path} to continue a training run)"
        raise KdzooError(f"run folder {path} already holds a run; {what} will not overwrite it: {instead}")


def remove_stray_temp_files(path: Path) -> None:
    """Temporary files of atomic writes that a kill interrupted (`.<name>.<random>.tmp`)."""
    if path.is_dir():
        for stray in path.glob(".*.tmp"):
            stray.unlink(missing_ok=True)


def clear_run(path: Path) -> None:
    """Remove a run's own files (a restart from scratch); anything else in the folder stays."""
    # In this order, a kill part-way leaves a folder that `--resume` restarts from scratch: first what marks
    # a trained run (summary, weights), config.yaml last.
    (path / "summary.json").unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (path / name).is_dir():
            shutil.rmtree(path / name)
    for name in sorted(RUN_FILES, key=lambda n: n == "config.yaml"):
        (path / name).unlink(missing_ok=True)


_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()  # locks this process holds


def _forget_held_in_child() -> None:
    # A forked child shares each lock's open file description: had it kept the descriptor, the lock would
    # outlive its run (and a killed run) as long as the child lives. Closing the child's copy never unlocks the
    # parent's; the child's lock objects forget their descriptor so that they never close a reused number.
    for lock in list(_HELD):
        lock._forget()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held_in_child)


def open_run_folder(path: Path, store, resume: bool, main: bool = True) -> "RunLock":
    """Lock a run folder (the main process of a run), finish an interrupted checkpoint publication (`store`: the
    run's CheckpointStore), remove stray temporary files, and refuse a fresh run over another run's files."""
    lock = RunLock(path)
    if not main:
        return lock
    check_out_path(path)
    lock.acquire()
    try:
        remove_stray_temp_files(path)
        store.repair()
        if not resume:
            refuse_existing_run(path, "a fresh run")
    except BaseException:
        lock.release()
        raise
    return lock


class RunFolderBusy(KdzooError):
    """Another process (or another open run in this one) holds the run folder."""


class RunLock:
    """An exclusive flock on `<run>/.lock`. The kernel drops it when its process dies, so a lock left by a
    killed run is never stale; the file keeps the holder's pid for the message."""

    def __init__(self, path: Path):
        self.path = Path(path) / LOCK_FILE
        self._fd: Optional[int] = None
        self._finalizer = None
        self.created_folder = False

    def acquire(self) -> "RunLock":
        self.created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                who = "an open run of this process" if holder == str(os.getpid()) else \
                    f"another kdzoo process (pid {holder})"
                raise RunFolderBusy(f"run folder {self.path.parent} is in use by {who}; wait for it to finish or "
                                    "choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.add(self)
        self._finalizer = weakref.finalize(self, _close_fd, fd)  # an abandoned lock closes with its object
        return self

    def release(self) -> None:
        if self._fd is not None:
            self._finalizer.detach()
            _close_fd(self._fd)  # closing drops the flock
            self._fd = None
            _HELD.discard(self)

    def abandon(self) -> None:
        """Release, and remove the run folder again if this lock created it and nothing but the lock is in it (a
        run refused before it started leaves nothing behind)."""
        self.release()
        folder = self.path.parent
        if self.created_folder and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)
            folder.rmdir()

    def _forget(self) -> None:
        if self._fd is not None:
            self._finalizer.detach()
            _close_fd(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
