"""The flat subset keys of older recipes and run folders, read into the `dataset.subset` block.

Before the block, four knobs described the same thing: `subset` (a fraction or count), `fraction` (HSAKD's
few-shot fraction), `val_fraction` (a held-out `val` stream) and `subset_size`/`subset_val_fraction` (CKD's
few-sample pair), all drawn with `subset_seed`. Recipes, dotted overrides and sweep grids that use them keep
working: each is rewritten into the block before validation, so every run sees one description."""
from __future__ import annotations

from typing import Any

import yaml

from kdzoo.errors import ConfigError

FLAT_KEYS = {"fraction": "size", "subset_size": "size", "subset_seed": "seed", "val_fraction": "val",
             "subset_val_fraction": "val"}
FEW_SAMPLE_VAL = 0.2  # CKD's split of the few-sample draw into train and val, when a recipe names none


def subset_block(dataset: Any) -> Any:
    """A `dataset:` mapping with its flat subset keys moved into `subset: {size, val, seed, few_sample}`."""
    if not isinstance(dataset, dict):
        return dataset
    dataset = dict(dataset)
    block = dataset.get("subset")
    if isinstance(block, dict):
        block = dict(block)
    else:  # `subset: 3000` / `subset: 0.1` / absent
        block = {} if block is None else {"size": block}
    flat = {key: dataset.pop(key) for key in list(dataset) if key in FLAT_KEYS}
    few_sample = flat.get("subset_size") is not None
    if few_sample:
        clash = [k for k in ("fraction", "val_fraction") if flat.get(k) is not None] + (["subset"] if "size" in block
                                                                                          else [])
        if clash:
            raise ConfigError(f"dataset.{clash[0]}: give either subset_size (its own train/val split) or {clash[0]}")
        block["few_sample"] = True
        block.setdefault("val", flat.get("subset_val_fraction") or FEW_SAMPLE_VAL)
    else:
        flat.pop("subset_val_fraction", None)  # read only with subset_size; run folders hold its default
    for key, value in flat.items():
        if value is None:
            continue
        if key == "fraction" and isinstance(value, (int, float)) and not 0 < value <= 1:
            raise ConfigError(f"dataset.fraction: must be in (0, 1] (a fraction of the training set), got {value}")
        target = FLAT_KEYS[key]
        if target in block and block[target] is not None and block[target] != value:
            other = "subset" if target == "size" and key != "subset_size" else f"subset.{target}"
            raise ConfigError(f"dataset.{key}: give either {other} or {key}, not both")
        block[target] = value
    if block:
        dataset["subset"] = block
    else:
        dataset.pop("subset", None)
    return dataset


def subset_override(key: str, raw: str) -> list[tuple[str, str]]:
    """A dotted override in the flat form, as overrides of the block: `dataset.subset=3000` ->
    `dataset.subset.size=3000`; `dataset.subset_size=1000` -> size plus few_sample; others unchanged."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] != "dataset":
        return [(key, raw)]
    name = parts[1]
    if name == "subset":
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            return [(key, raw)]
        return [(key, raw)] if isinstance(value, dict) else [("dataset.subset.size", raw)]
    if name not in FLAT_KEYS:
        return [(key, raw)]
    pairs = [(f"dataset.subset.{FLAT_KEYS[name]}", raw)]
    if name == "subset_size":
        pairs.append(("dataset.subset.few_sample", "true"))
    return pairs
