"""`kdzoo.run`: the CLI's train / distill / pretrain in Python, returning what the run made."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from kdzoo.errors import KdzooError


@dataclass
class RunResult:
    """A finished run: its folder, its `summary.json` (metrics) and its checkpoint files."""

    folder: Path
    summary: dict[str, Any]

    @property
    def best(self) -> Path:
        """The best checkpoint (the deployed network at the epoch the run selected)."""
        return self._checkpoint("best")

    @property
    def last(self) -> Path:
        """The last epoch's checkpoint."""
        return self._checkpoint("last")

    def _checkpoint(self, which: str) -> Path:
        from kdzoo.checkpoints.store import resolve_checkpoint

        return Path(resolve_checkpoint(self.folder, which))

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One record per evaluated epoch (metrics.jsonl)."""
        text = (self.folder / "metrics.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def __str__(self) -> str:
        from kdzoo.engine.trainer import end_of_run

        return f"{self.folder}: {end_of_run(self.summary)}"


def _dotted(overrides: Union[None, dict[str, Any], list[str]]) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def run(
    recipe: Union[str, Path],
    out: Union[str, Path, None] = None,
    overrides: Union[None, dict[str, Any], list[str]] = None,
    *,
    resume: bool = False,
    quiet: bool = True,
    command: Optional[str] = None,
) -> RunResult:
    """Train what a recipe describes, as `kdzoo train|distill|pretrain -c RECIPE --out OUT key=value ...` does.

    `overrides`: `{"epochs": 2, "optim.lr": 0.01}` or `["epochs=2"]`. `out`: the run folder (default
    runs/<name>); an existing one is refused unless `resume=True`, which continues it exactly. `command`
    ("train", "distill", "pretrain"): also check that the recipe fits that verb, as the CLI does. Returns a
    `RunResult`; bad input raises `kdzoo.errors.KdzooError` with the one-line message the CLI prints.
    """
    from kdzoo.checkpoints.run_folder import refuse_existing_run
    from kdzoo.config import load_config
    from kdzoo.engine.trainer import make_engine
    from kdzoo.regimes.names import check_names

    if resume:
        if out is None:
            raise KdzooError("run(resume=True): give out=, the run folder to continue")
        from kdzoo.engine.resume_rules import load_resumed_config

        cfg = load_resumed_config(Path(out), _dotted(overrides), f"kdzoo.run({str(recipe)!r}, out={str(out)!r})")
    else:
        cfg = load_config(recipe, _dotted(overrides))
    folder = Path(out) if out is not None else Path("runs") / cfg.name
    if not resume:
        refuse_existing_run(folder, "kdzoo.run", "give another out= (or resume=True to continue it)")
    check_names(cfg, command)
    engine = make_engine(cfg, folder, resume=resume, quiet=quiet)
    summary = engine.fit()
    return RunResult(folder, summary)
