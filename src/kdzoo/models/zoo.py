"""Imports every architecture module so its `@register_model` builders run."""
from kdzoo.models import mlp, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
