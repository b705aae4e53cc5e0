"""Training regimes. Importing this package registers all of them."""
import importlib
import pkgutil

from kdzoo.regimes.base import REGIMES, BuildContext, Regime, register_regime

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


__all__ = ["REGIMES", "BuildContext", "Regime", "register_regime"]
