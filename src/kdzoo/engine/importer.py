"""Convert a teacher checkpoint published by RepDistiller or mdistiller (.pth) into a kdzoo run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from kdzoo.data import dataset_info
from kdzoo.engine.checkpoint import CHECKPOINT_DIR, load_state_dict_strict, save_weights, unsafe_load_reason
from kdzoo.errors import CheckpointError
from kdzoo.models import create_model


def read_published_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a .pth, loaded with weights_only=True (never executes code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means we will not use this file
        raise CheckpointError(f"cannot read {path} safely: {unsafe_load_reason(err)}") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected {{'model': state_dict}} or a state_dict)")
    # nn.DataParallel prefixes every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def import_checkpoint(path: str | Path, arch: str, num_classes: int, dataset: str, out: str | Path,
                      in_channels: Optional[int] = None) -> Path:
    from kdzoo.engine.run_folder import refuse_existing_run

    refuse_existing_run(Path(out), "import-checkpoint")
    state = read_published_state(path)
    info = dataset_info(dataset)
    channels = in_channels or info.in_channels
    model = create_model(arch, num_classes=num_classes, in_channels=channels)
    load_state_dict_strict(model, state, str(path))
    meta = {"format": "kdzoo", "version": 1, "arch": arch, "num_classes": num_classes, "in_channels": channels,
            "dataset": dataset, "dataset_root": None, "image_size": None, "phase": "imported", "epoch": None,
            "metrics": {}, "run": Path(out).name, "imported_from": str(path)}
    folder = Path(out) / CHECKPOINT_DIR
    for name in ("best", "last"):
        save_weights(folder / f"{name}.safetensors", model.state_dict(), meta)
    return Path(out)
