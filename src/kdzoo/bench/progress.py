"""Progress of long bench runs: per-epoch lines with an ETA, and short durations."""
from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochProgress:
    """The engine's `log` callable for one run: its per-epoch lines, prefixed with the run's name and followed by
    an ETA (mean wall time per epoch so far, evaluation and checkpoint included, times the epochs left).

    The engine prints `<phase> epoch i/N  loss ...`; the ETA is for the phase in the line (the whole run for
    one-phase regimes). Other lines pass through with the prefix."""

    EPOCH = re.compile(r"^(?P<phase>\S+) epoch (?P<i>\d+)/(?P<n>\d+)\b")

    def __init__(self, label: str, sink: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.label, self.sink, self.clock = label, sink, clock
        self.start()

    def start(self) -> None:
        """Call right before `Engine.fit()`: the first epoch is timed from here."""
        self._phase: str | None = None
        self._since = self.clock()
        self._times: list[float] = []

    def __call__(self, line: str) -> None:
        match = self.EPOCH.match(line)
        if not match:
            self.sink(f"{self.label}: {line}")
            return
        now = self.clock()
        if match["phase"] != self._phase:
            self._phase, self._times = match["phase"], []
        self._times.append(now - self._since)
        self._since = now
        left = int(match["n"]) - int(match["i"])
        eta = duration(statistics.mean(self._times) * left)
        # a method's init phase comes before `main`: say that its ETA is the phase's only
        self.sink(f"{self.label}: {line}  " + (f"ETA {eta}" if match["phase"] == "main" else f"phase ETA {eta}"))
