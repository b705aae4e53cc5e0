"""`kdzoo imagenet-valprep ROOT --labels FILE`: sort ImageNet's flat val folder (ILSVRC2012_val_*.JPEG) into
val/<wnid>/ class folders, what the `imagenet` dataset reads. The label file is any of

- valprep.sh (soumith/imagenetloader.torch): `mkdir -p <wnid>` and `mv <file> <wnid>/` lines;
- LOC_val_solution.csv (Kaggle's ImageNet): `ImageId,PredictionString` with the wnid first in each string;
- a plain list: `<file> <wnid>` per line (space, tab or comma between).

Files move one by one (os.replace), so an interrupted run is simply run again: files already in their folder are
counted, not moved twice. A wnid that is no train class, or a listed file that is in neither place, is a one-line
error naming the label file's line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from kdzoo.errors import DatasetError

WNID = re.compile(r"n\d{8}")
MOVE = re.compile(r"^\s*mv\s+(\S+)\s+(n\d{8})/?\s*$")


def read_labels(path: Path) -> list[tuple[str, str, int]]:
    """(file name, wnid, line number) for every image the label file names."""
    if path.is_dir():
        raise DatasetError(f"imagenet-valprep: label file {path} is a directory")
    if not path.is_file():
        raise DatasetError(f"imagenet-valprep: label file {path} not found")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"imagenet-valprep: label file {path} is not a text file (byte 0x{raw[err.start]:02x} at "
                           f"offset {err.start} is not UTF-8)") from None
    out = []
    for number, line in enumerate(content.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("mkdir") or text.lower().startswith("imageid,"):
            continue
        move = MOVE.match(text)
        if move:
            out.append((move.group(1), move.group(2), number))
            continue
        cells = re.split(r"[\s,]+", text)
        if len(cells) >= 2 and WNID.fullmatch(cells[1]):
            name = cells[0] if "." in cells[0] else f"{cells[0]}.JPEG"  # Kaggle's ImageId has no extension
            out.append((name, cells[1], number))
            continue
        if text.isdigit():
            raise DatasetError(f"imagenet-valprep: {path}:{number}: class numbers (ILSVRC2012_validation_ground_"
                               "truth.txt) need meta.mat to become wnids; give valprep.sh or LOC_val_solution.csv")
        raise DatasetError(f"imagenet-valprep: {path}:{number}: expected 'mv <file> <wnid>/', '<file> <wnid>' or "
                           f"'<ImageId>,<wnid> ...', got {text[:60]!r}")
    if not out:
        raise DatasetError(f"imagenet-valprep: {path} names no images")
    return out


def lay_out_val(root: Path, labels: Path) -> tuple[int, int, int]:
    """Move root/val/<file> to root/val/<wnid>/<file>; returns (moved, already in place, class folders)."""
    val = root / "val"
    if not val.is_dir():
        raise DatasetError(f"imagenet-valprep: {val} is missing (unpack ILSVRC2012_img_val.tar there)")
    train = root / "train"
    classes = {p.name for p in train.iterdir() if p.is_dir()} if train.is_dir() else None
    entries = read_labels(labels)
    moved = done = 0
    for name, wnid, number in entries:
        if classes is not None and wnid not in classes:
            raise DatasetError(f"imagenet-valprep: {labels}:{number}: {wnid} is not a class folder of {train}")
        source, target = val / name, val / wnid / name
        if target.is_file():
            done += 1
            continue
        if not source.is_file():
            raise DatasetError(f"imagenet-valprep: {source} (named by {labels}:{number}) is missing")
        target.parent.mkdir(exist_ok=True)
        os.replace(source, target)
        moved += 1
    return moved, done, len({wnid for _, wnid, _ in entries})


def add_command(sub) -> None:
    p = sub.add_parser("imagenet-valprep", help="sort ImageNet's flat val folder into class folders")
    p.add_argument("root", help="the ImageNet folder holding train/ and val/")
    p.add_argument("--labels", required=True, help="valprep.sh, LOC_val_solution.csv or '<file> <wnid>' lines")
    p.set_defaults(func=cmd_valprep)


def cmd_valprep(args) -> int:
    moved, done, classes = lay_out_val(Path(args.root), Path(args.labels))
    print(f"imagenet-valprep: moved {moved} images into {classes} class folders under {Path(args.root) / 'val'}"
          f"{f' ({done} were already in place)' if done else ''}")
    return 0
