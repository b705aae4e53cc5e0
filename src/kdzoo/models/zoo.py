"""Imports every architecture module so its `@register_model` builders run."""
from kdzoo.models import (  # noqa: F401
    aux,  # noqa: F401,E402  (after the plain archs it wraps)
    external,  # noqa: F401,E402  (its tv:/timm: resolver after aux's tv:<resnet>_aux)
    mlp,
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    trans,  # noqa: F401,E402
    vgg,
    wrn,
)
