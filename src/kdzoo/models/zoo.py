"""Imports every architecture module so its `@register_model` builders run."""
from kdzoo.models import mlp, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
from kdzoo.models import aux  # noqa: F401,E402  (after the plain archs it wraps)
from kdzoo.models import trans  # noqa: F401,E402
