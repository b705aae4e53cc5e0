"""What a resumed run may change: the checkpointed recipe is the truth; only the budget and the engine's
execution options (`epochs`, `engine.*`) may differ, so that a resume never silently trains another recipe."""
from __future__ import annotations

from typing import Any, Iterator

from kdzoo.errors import ConfigError

MAY_CHANGE = ("epochs", "engine")
RULE = "a resumed run keeps its recipe: only epochs and engine.* may change"


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
        if key.split(".")[0] not in MAY_CHANGE:
            raise ConfigError(f"{key}: {source} says {new!r}, but the checkpointed run used {old!r}; {RULE}")
