"""What a resumed run may change: the checkpointed recipe is the truth; only the budget and the engine's
execution options (`epochs`, `engine.*`) may differ, so that a resume never silently trains another recipe."""
from __future__ import annotations

from typing import Any, Iterator

from kdzoo.errors import ConfigError

# Where the data lives and how it is fed may change (another machine); what is trained may not.
MAY_CHANGE = ("epochs", "engine", "dataset.root", "dataset.download", "dataset.num_workers",
              "dataset.eval_batch_size")
RULE = ("a resumed run keeps its recipe: only epochs, engine.* and dataset.root/download/num_workers/"
        "eval_batch_size may change")


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE)


def differences(saved: Any, current: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every leaf that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            yield from differences(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
    elif saved != current:
        yield path, saved, current


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Refuse, in one line, a resume whose recipe differs from the checkpointed one outside MAY_CHANGE."""
    for key, old, new in differences(saved, current):
        if not may_change(key):
            raise ConfigError(f"{key}: {source} says {new!r}, but the checkpointed run used {old!r}; {RULE}")
    schedule = current.get("schedule", {}).get("name")
    if saved.get("epochs") != current.get("epochs") and schedule == "cosine":
        raise ConfigError(f"epochs: a cosine schedule spans the run's {saved.get('epochs')} epochs; resuming with "
                          f"{current.get('epochs')} would make the lr jump back up. Train a new run for another "
                          "budget (epochs may change on resume with multistep or constant schedules)")
