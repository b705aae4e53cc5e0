"""Distillation methods, one module each. Importing this package registers all of them."""
import importlib
import pkgutil

from kdzoo.distillers.base import InitStage, Method, SetupContext
from kdzoo.distillers.registry import METHODS, method_for_term, register_method

# Every module in this folder that is not infrastructure defines (and registers) methods.
_INFRA = {"base", "registry", "common"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _INFRA and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["InitStage", "METHODS", "Method", "SetupContext", "method_for_term", "register_method"]
