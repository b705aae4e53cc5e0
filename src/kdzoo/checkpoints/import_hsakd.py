"""HSAKD's checkpoints (winycg/HSAKD: `{'net': state_dict}` in `<arch>.pth.tar`) into kdzoo's `_aux` layout.

HSAKD keeps the backbone under `backbone.` (kdzoo's names) and the heads in one `auxiliary_classifier` module:
head i is `block_extractor{i}` (the copied stages), then `bn{i}` (WRN's final BN) or `conv2_{i}` (MobileNetV2's
last 1x1 conv) when the family has one, and `fc{i}`. kdzoo holds head i as `branches.{i-1}` (the same modules in
the same order, ShuffleNetV2's stages flattened) and `fcs.{i-1}`. The tensors of each head are paired in
module order: both sides sorted by their path with numeric parts compared as numbers (each name's own
registration order is the same class on both sides), then every pair must agree in leaf name and shape. An
online-KD file (`net1.`, `net2.`: HSAKD's mutual_kd_net) holds two peers: `peer` picks one.
"""
from __future__ import annotations

import re
from typing import Optional

from torch import Tensor

from kdzoo.errors import CheckpointError

AUX = "auxiliary_classifier."
# HSAKD's model names (models/__init__.py) -> kdzoo's; every other HSAKD name is kdzoo's already.
HSAKD_ARCHS = {"mobilenetV2": "MobileNetV2_hsakd", "vgg8_bn": "vgg8", "vgg13_bn": "vgg13",
               "resnet18_imagenet": "tv:resnet18", "resnet34_imagenet": "tv:resnet34",
               "resnet50_imagenet": "tv:resnet50"}
HEAD_PARTS = ("block_extractor{}", "bn{}", "conv2_{}")  # head i's modules in forward order, before fc{i}


def kdzoo_arch(arch: str) -> str:
    """kdzoo's name for an arch given by HSAKD's name (`mobilenetV2_aux` -> `MobileNetV2_hsakd_aux`)."""
    base, aux = (arch[:-4], "_aux") if arch.endswith("_aux") else (arch, "")
    return HSAKD_ARCHS.get(base, base) + aux


def is_hsakd(state: dict[str, Tensor]) -> bool:
    return any(k.startswith(AUX) for k in state)


def pick_peer(state: dict[str, Tensor], peer: Optional[int], source: str) -> dict[str, Tensor]:
    """One network of an online-KD file (`net1.*`, `net2.*`), or the state as it is."""
    peers = sorted({int(m.group(1)) for k in state if (m := re.match(r"net(\d+)\.", k))})
    if not peers or not all(re.match(r"net\d+\.", k) for k in state):
        if peer is not None:
            raise CheckpointError(f"--peer {peer}: {source} holds one network, not an online-KD pair")
        return state
    if peer not in peers:
        raise CheckpointError(f"{source} holds {len(peers)} online-KD peers ({', '.join(f'net{p}' for p in peers)}); "
                              f"choose one with --peer {{{','.join(map(str, peers))}}}")
    prefix = f"net{peer}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _module_order(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def _under(keys, prefix: str) -> list[str]:
    return sorted((k for k in keys if k.startswith(prefix)), key=_module_order)


def hsakd_to_kdzoo(state: dict[str, Tensor], own: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """HSAKD's state_dict renamed to kdzoo's `_aux` names (`own`: the kdzoo model's state_dict)."""
    heads = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{AUX}fc(\d+)\.", k))})
    out = {k: v for k, v in state.items() if not k.startswith(AUX)}
    used: set[str] = set()
    for i in heads:
        theirs = [k for part in HEAD_PARTS for k in _under(state, f"{AUX}{part.format(i)}.")]
        ours = _under(own, f"branches.{i - 1}.")
        pairs = [(f"{AUX}fc{i}.{leaf}", f"fcs.{i - 1}.{leaf}") for leaf in ("weight", "bias")]
        if len(theirs) != len(ours):
            raise CheckpointError(f"{source}: HSAKD head {i} holds {len(theirs)} tensors, kdzoo's branches.{i - 1} "
                                  f"{len(ours)}: another arch (give --arch as the file was trained)")
        for src, dst in [*zip(theirs, ours), *pairs]:
            if src not in state or dst not in own:
                raise CheckpointError(f"{source}: HSAKD head {i} has no {src}" if src not in state else
                                      f"{source}: HSAKD head {i} has no place in this arch ({dst} does not exist)")
            same_leaf = src.rsplit(".", 1)[1] == dst.rsplit(".", 1)[1]
            if not same_leaf or tuple(state[src].shape) != tuple(own[dst].shape):
                raise CheckpointError(f"{source}: HSAKD's {src} {tuple(state[src].shape)} does not fit kdzoo's {dst} "
                                      f"{tuple(own[dst].shape)}: another arch (give --arch as the file was trained)")
            out[dst] = state[src]
            used.add(src)
    left = [k for k in state if k.startswith(AUX) and k not in used]
    if left:
        raise CheckpointError(f"{source}: {len(left)} HSAKD head tensors have no place in this arch (e.g. {left[0]})")
    return out
