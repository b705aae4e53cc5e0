"""What a resumed run may change: the checkpointed recipe is the truth; only the budget, the engine's execution
options and where the data lives may differ, so that a resume never silently trains another recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

from kdzoo.errors import ConfigError

# Where the data lives and how it is fed may change (another machine); what is trained may not.
MAY_CHANGE = ("epochs", "engine", "logging", "dataset.root", "dataset.download", "dataset.num_workers",
              "dataset.eval_batch_size")
RULE = ("a resumed run keeps its recipe: only epochs, engine.*, logging.* and dataset.root/download/num_workers/"
        "eval_batch_size may change")
_ABSENT = object()  # a key a run saved by an older kdzoo does not have


class ResumeMismatch(ConfigError):
    """The run cannot continue as asked (another recipe, budget, world size or dataset): start it again."""


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE)


def differences(saved: Any, current: Any, defaults: Any = _ABSENT,
                path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every leaf that differs; a key the saved recipe lacks
    (written before the key existed) counts only when the current value is not the key's default."""
    if isinstance(saved, dict) and isinstance(current, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        for key in list(saved) + [k for k in current if k not in saved]:
            yield from differences(saved.get(key, _ABSENT), current.get(key, _ABSENT), defaults.get(key, _ABSENT),
                                   f"{path}.{key}" if path else str(key))
    elif saved is _ABSENT and current == defaults:
        return
    elif saved != current:
        yield path, None if saved is _ABSENT else saved, None if current is _ABSENT else current


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], source: str,
                        defaults: Optional[dict[str, Any]] = None) -> None:
    """Refuse, in one line, a resume whose recipe differs from the checkpointed one outside MAY_CHANGE."""
    for key, old, new in differences(saved, current, defaults if defaults is not None else _ABSENT):
        if not may_change(key):
            raise ResumeMismatch(f"{key}: {source} says {new!r}, but the checkpointed run used {old!r}; {RULE}")
    schedule = current.get("schedule", {}).get("name")
    if saved.get("epochs") != current.get("epochs") and schedule == "cosine":
        raise ResumeMismatch(f"epochs: a cosine schedule spans the run's {saved.get('epochs')} epochs; resuming "
                             f"with {current.get('epochs')} would make the lr jump back up. Train a new run for "
                             "another budget (epochs may change on resume with multistep or constant schedules)")


def check_resume_state(state: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any],
                       data: dict[str, Any], world_size: int) -> None:
    """A resume state may continue this run: the same recipe (see check_resume_config), data of the same
    identity (name, size, input shape) and the same number of processes (the global batch)."""
    if state.get("config") is not None:
        from kdzoo.config.load import drop_retired

        check_resume_config(drop_retired(state["config"]), current, "this resume", defaults)
    saved_data = state.get("data", data)
    if saved_data != data:
        raise ResumeMismatch(f"dataset: the run was checkpointed on {saved_data}, but the data now is {data}; {RULE}")
    saved_world = state.get("world_size", world_size)
    if saved_world != world_size:
        raise ResumeMismatch(f"the run was checkpointed with {saved_world} processes and is resumed with "
                             f"{world_size}: the global batch would change; resume it with --nproc_per_node "
                             f"giving {saved_world} processes in all")


def load_resumed_config(run_dir: Path, overrides: list[str], start: str):
    """The recipe a run folder saved, with the overrides a resume may make (`start`: how to start such a run,
    for a folder that holds none); one-line errors otherwise."""
    from kdzoo.checkpoints.run_folder import check_out_path
    from kdzoo.config import load_config

    check_out_path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); start it with {start}")
    fixed = [o for o in overrides if not may_change(o.partition("=")[0])]
    if fixed:
        raise ConfigError(f"--resume: {fixed[0]}: {RULE}")
    return load_config(run_dir / "config.yaml", overrides)
