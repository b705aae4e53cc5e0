"""Training regimes. Importing this package registers all of them."""
import importlib
import pkgutil

from kdzoo.regimes.base import REGIMES, BuildContext, Regime, register_regime

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def make_engine(cfg, out, **options):
    """The engine that runs `cfg`'s regime (the one place that joins the regime registry and the engine)."""
    from kdzoo.engine.trainer import Engine

    return Engine(cfg, out, build=REGIMES.get(cfg.regime).build, **options)


__all__ = ["REGIMES", "BuildContext", "Regime", "make_engine", "register_regime"]
