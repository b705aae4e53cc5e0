"""Optional Weights & Biases logging (`logging.wandb: {project: ...}`): every metrics line also goes to a W&B run
when wandb is installed and an API key is present (or `mode: offline`); otherwise one line says what is missing
and the run logs to TensorBoard and metrics.jsonl as always. A resumed run continues the same W&B run."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from kdzoo.errors import ConfigError

KEYS = ("project", "entity", "name", "tags", "mode", "group")


def check_wandb_section(section: Optional[dict[str, Any]]) -> None:
    if section is None:
        return
    if not isinstance(section, dict) or not section.get("project"):
        raise ConfigError("logging.wandb: give at least {project: NAME}")
    unknown = [k for k in section if k not in KEYS]
    if unknown:
        raise ConfigError(f"logging.wandb.{unknown[0]}: unknown key (known: {', '.join(KEYS)})")


def _has_key(wandb) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.api.api_key)
    except Exception:  # no settings, no netrc
        return False


class WandbLogger:
    def __init__(self, run):
        self.run = run

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "time"}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_wandb(section: Optional[dict[str, Any]], folder: Path, name: str, config: dict[str, Any],
               log: Callable[[str], None] = print) -> Optional[WandbLogger]:
    if section is None:
        return None
    try:
        import wandb
    except ImportError:
        log("logging.wandb: wandb is not installed (pip install 'kdzoo[wandb]'); logging to TensorBoard and "
            "metrics.jsonl only")
        return None
    mode = section.get("mode") or os.environ.get("WANDB_MODE")
    if mode not in ("offline", "disabled") and not _has_key(wandb):
        log("logging.wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`); logging to TensorBoard and "
            "metrics.jsonl only")
        return None
    id_file = folder / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    run = wandb.init(project=section["project"], entity=section.get("entity"), name=section.get("name") or name,
                     group=section.get("group"), tags=section.get("tags"), mode=mode, id=run_id, resume="allow",
                     dir=str(folder), config=config)
    return WandbLogger(run)
