"""Convert a checkpoint published by RepDistiller or mdistiller (.pth), HSAKD (`<arch>.pth.tar`, its heads renamed
to kdzoo's `_aux` layout: import_hsakd.py), or one of torchvision's released weight files
(`resnet34-333f7ec4.pth`: a bare state_dict; the name's hash is the file's SHA-256 prefix, checked as torchvision
does), into a kdzoo run folder. Files are read with weights_only=True: never executed."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

import torch

from kdzoo.checkpoints.format import (
    CHECKPOINT_DIR,
    load_state_dict_strict,
    save_weights,
    unsafe_load_reason,
)
from kdzoo.checkpoints.import_hsakd import (
    hsakd_to_kdzoo,
    is_hsakd,
    kdzoo_arch,
    pick_peer,
)
from kdzoo.data import dataset_info
from kdzoo.errors import CheckpointError, KdzooError
from kdzoo.models import create_model


def read_published_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a .pth, loaded with weights_only=True (never executes code)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the .pth file to import")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
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


FORMATS = ("published", "torchvision")
TORCHVISION_NAME = re.compile(r"^(?P<arch>[a-z0-9_]+?)-(?P<hash>[a-f0-9]{8,})\.pth$")


def torchvision_arch(path: str | Path, arch: Optional[str]) -> str:
    """`tv:<arch>`: the one given (tv: added), else the file name's (`resnet34-333f7ec4.pth` -> tv:resnet34)."""
    if arch:
        return arch if arch.startswith("tv:") else f"tv:{arch}"
    match = TORCHVISION_NAME.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path}: not named like torchvision's files (<arch>-<hash>.pth); give --arch")
    return f"tv:{match.group('arch')}"


def check_torchvision_hash(path: str | Path) -> None:
    """torchvision names its files by the SHA-256 of their bytes: a file whose name's hash differs is corrupt."""
    match = TORCHVISION_NAME.match(Path(path).name)
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group("hash")):
        raise CheckpointError(f"{path}: its SHA-256 starts {digest.hexdigest()[:8]}, not {match.group('hash')} as "
                              "its name says (a corrupt or truncated download)")


def import_checkpoint(path: str | Path, arch: Optional[str], num_classes: Optional[int], dataset: Optional[str],
                      out: str | Path, in_channels: Optional[int] = None, fmt: str = "published",
                      peer: Optional[int] = None) -> Path:
    from kdzoo.checkpoints.run_folder import refuse_existing_run

    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if fmt == "torchvision":
        arch, num_classes, dataset = torchvision_arch(path, arch), num_classes or 1000, dataset or "imagenet"
    elif not (arch and num_classes and dataset):
        raise CheckpointError("import-checkpoint: --arch, --num-classes and --dataset are needed (or --format "
                              "torchvision, which reads the arch from the file name)")
    refuse_existing_run(Path(out), "import-checkpoint")
    state = pick_peer(read_published_state(path), peer, str(path))
    if fmt == "torchvision":
        check_torchvision_hash(path)
    arch = kdzoo_arch(arch)
    channels = in_channels or _in_channels(dataset)
    model = create_model(arch, num_classes=num_classes, in_channels=channels)
    if is_hsakd(state):
        state = hsakd_to_kdzoo(state, model.state_dict(), str(path))
    try:
        load_state_dict_strict(model, state, str(path))
    except CheckpointError as err:  # name the arch asked for, not the class (every torchvision ResNet is "ResNet")
        raise CheckpointError(str(err).replace(f"does not fit {type(model).__name__}", f"does not fit {arch}")) \
            from None
    meta = {"format": "kdzoo", "version": 1, "arch": arch, "num_classes": num_classes, "in_channels": channels,
            "dataset": dataset, "dataset_root": None, "image_size": None, "phase": "imported", "epoch": None,
            "metrics": {}, "run": Path(out).name, "imported_from": str(path), "imported_format": fmt}
    folder = Path(out) / CHECKPOINT_DIR
    for name in ("best", "last"):
        save_weights(folder / f"{name}.safetensors", model.state_dict(), meta)
    return Path(out)


def _in_channels(dataset: str) -> int:
    from kdzoo.data import DATASETS

    try:
        return dataset_info(dataset).in_channels
    except KdzooError:
        if dataset in DATASETS:  # a known dataset whose info needs its files (imagenet, imagefolder): RGB
            return 3
        raise
