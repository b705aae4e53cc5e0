"""Worker of tests/test_ddp_launch.py: one process of a torchrun launch. Trains a recipe through the engine and
saves this rank's whole program state (networks, method banks, queues) as OUT/rank<r>.pt.

    python -m torch.distributed.run ... tests/ddp_worker.py OUT RECIPE [overrides...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from kdzoo.config import load_config
from kdzoo.engine.trainer import make_engine


def flat(state, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value.detach().cpu().clone()
    return out


def main() -> None:
    out, recipe, *overrides = sys.argv[1:]
    engine = make_engine(load_config(recipe, overrides), Path(out) / "run", quiet=True)
    engine.fit()
    torch.save(flat(engine.program.state_dict()), Path(out) / f"rank{engine.dist.rank}.pt")


if __name__ == "__main__":
    main()
