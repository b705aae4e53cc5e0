"""Names a recipe gives (models, regime, dataset) and the CLI verb it is run with, checked before any dataset is
read or network built: `kdzoo train/distill/pretrain` and every grid point of `kdzoo sweep`."""
from __future__ import annotations

from typing import Optional

from kdzoo.config.schema import Config
from kdzoo.errors import KdzooError
from kdzoo.regimes.base import REGIMES


def check_mode(cfg: Config, mode: Optional[str]) -> None:
    """`pretrain` runs a regime made for it; where the regime says so, `train` runs without a teacher and `distill`
    with one: say so early instead of failing later. Every loss term must name a method (whatever the mode)."""
    from kdzoo.distillers import method_for_term

    regime = REGIMES.get(cfg.regime)
    regime.params(cfg)  # its own parameters, validated before anything is built
    needing = [t for t, w in cfg.loss.items() if w != 0 and method_for_term(t).needs_teacher()]
    if mode == "pretrain" and regime.command != "pretrain":
        made = [name for name in REGIMES.names() if REGIMES.get(name).command == "pretrain"]
        raise KdzooError(f"kdzoo pretrain trains without labels: the recipe's regime is {cfg.regime}; use "
                         f"regime: {' or '.join(made)} (or kdzoo train)")
    if not regime.verb_follows_teacher:
        return
    if mode == "train" and needing:
        raise KdzooError(f"loss.{needing[0]} needs a teacher; use `kdzoo distill` for this recipe")
    if mode == "distill" and not needing:
        raise KdzooError("no loss term uses a teacher; use `kdzoo train` for this recipe")


def check_names(cfg: Config, mode: Optional[str] = None) -> None:
    """Unknown model, method, regime or dataset names fail before any dataset is read or network built; in
    that order, since the model and method registries load without torchvision (about a second sooner).
    `mode` (train, distill, pretrain) also checks that the recipe fits that verb."""
    from kdzoo.models.registry import check_model_name

    for arch in (cfg.student.arch, cfg.teacher.arch):
        if arch:
            check_model_name(arch)
    check_mode(cfg, mode)  # (an unknown regime fails here)
    from kdzoo.data import dataset_info, list_datasets

    if cfg.dataset.name not in list_datasets():
        dataset_info(cfg.dataset.name)  # raises the one-line "unknown dataset" error with suggestions
