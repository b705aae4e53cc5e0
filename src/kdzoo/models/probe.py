"""Feature shapes of a model from one forward of a real 2-sample batch, and recipe overrides of its spec."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kdzoo.errors import ConfigError
from kdzoo.models.features import (
    FeatureModel,
    Features,
    FeatureSpec,
    Needs,
    feature_spec,
)

ALL_FEATURES = Needs(logits=True, pooled=True, stages=True, preact=True)


def spec_override(model_cfg, model: nn.Module) -> Optional[FeatureSpec]:
    """The recipe's `stages:`/`head:` for a model, completed from its own spec; None without an override."""
    if model_cfg.stages is None and model_cfg.head is None:
        return None
    default = None
    try:
        default = feature_spec(model)
    except Exception:  # noqa: BLE001 - an override is exactly for models without a spec
        pass
    stages = model_cfg.stages if model_cfg.stages is not None else (default.stages if default else [])
    head = model_cfg.head or (default.head if default else None)
    if head is None:
        raise ConfigError("head: name the classifier module of this model")
    return FeatureSpec(stages=tuple(stages), head=head)


@torch.no_grad()
def probe_shapes(model: nn.Module, spec: Optional[FeatureSpec], example: torch.Tensor) -> Features:
    """Feature shapes from one forward of a 2-sample batch in eval mode (BN statistics untouched)."""
    has_stages = bool((spec or feature_spec(model)).stages)
    want = ALL_FEATURES if has_stages else Needs(logits=True, pooled=True)
    if hasattr(model, "aux_inputs") and hasattr(model, "head_logits"):  # an _aux or _trans model: its heads too
        want = want | Needs(heads=True)
    probe = FeatureModel(model, want, spec)
    was_training = model.training
    model.eval()
    try:
        feats = probe(example)
    finally:
        probe.remove_hooks()
        model.train(was_training)
    return feats.map(lambda t: t.shape)
