"""Building a program's networks from the recipe: a trained network (fresh, or initialised from a checkpoint,
strictly or only where tensors fit, with parts frozen) and a frozen teacher checked against the data."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from kdzoo.checkpoints.format import load_state_dict_strict, load_weights
from kdzoo.checkpoints.load import load_model, load_teacher
from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.data.info import DatasetInfo
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureSpec, create_model
from kdzoo.models.freezing import freeze
from kdzoo.models.partial_load import load_matching
from kdzoo.models.probe import spec_override


def trained_network(model_cfg, info: DatasetInfo, key: str = "student",
                    log: Callable[[str], None] = print) -> tuple[nn.Module, Optional[FeatureSpec]]:
    """`model_cfg.arch` for this data; `checkpoint` initialises it (all of it, or with checkpoint_strict false
    what fits: a backbone under a new head); `freeze` fixes module prefixes."""
    if model_cfg.arch is None:
        raise ConfigError(f"{key}.arch: required")
    model = create_model(model_cfg.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    if model_cfg.checkpoint:
        if model_cfg.checkpoint_strict:
            init, meta, file = load_model(model_cfg.checkpoint)
            plain = getattr(model, "plain_arch", None)
            if plain is not None and meta.get("arch") == plain:  # a plain network into an _aux model's backbone
                load_state_dict_strict(model.backbone, init.state_dict(), str(file))
                log(f"{key}: backbone from {file} ({plain}); heads initialised fresh")
            else:
                load_state_dict_strict(model, init.state_dict(), str(file))
        else:
            file = resolve_checkpoint(model_cfg.checkpoint, "best")
            state, _ = load_weights(file)
            log(f"{key}: from {file}, {load_matching(model, state, str(file)).summary()}")
    if model_cfg.freeze:
        if not model_cfg.checkpoint:
            raise ConfigError(f"{key}.freeze: the frozen part would stay at its random initialisation; give "
                              f"{key}.checkpoint (a trained model, e.g. the plain arch for an _aux backbone)")
        frozen = freeze(model, model_cfg.freeze)
        log(f"{key}: {len(frozen)} parameter tensors frozen under {', '.join(map(repr, model_cfg.freeze))}")
    return model, spec_override(model_cfg, model)


def frozen_teacher(model_cfg, info: DatasetInfo) -> tuple[nn.Module, dict[str, Any], Optional[FeatureSpec]]:
    """The checkpointed teacher, checked against the data (architecture, classes, channels); frozen whole."""
    if model_cfg.freeze or not model_cfg.checkpoint_strict:
        key = "freeze" if model_cfg.freeze else "checkpoint_strict"
        raise ConfigError(f"teacher.{key}: a frozen teacher is loaded whole and frozen whole")
    model, meta = load_teacher(model_cfg.checkpoint, model_cfg.arch, info.num_classes, info.in_channels,
                               info.name)
    return model, meta, spec_override(model_cfg, model)
