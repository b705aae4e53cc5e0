"""The model zoo: CIFAR-style networks with RepDistiller's layouts, plus torchvision/timm by prefix."""
from kdzoo.models import zoo as _zoo  # noqa: F401  (registers the zoo)
from kdzoo.models.features import (
           FeatureModel,
           Features,
           FeatureSpec,
           Needs,
           feature_spec,
           get_head,
)
from kdzoo.models.registry import (
           MODELS,
           check_model_name,
           create_model,
           list_models,
           register_model,
)

__all__ = ["Features", "FeatureModel", "FeatureSpec", "Needs", "feature_spec", "get_head", "MODELS",
           "check_model_name", "create_model", "list_models", "register_model"]
