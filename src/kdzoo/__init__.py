"""kdzoo: knowledge distillation for PyTorch.

The Python API (docs/api.md):

- `kdzoo.Distiller(student, teacher, loss=..., methods=..., example=...)`: any method in your own loop;
- `kdzoo.run(recipe, out=..., overrides=...)`: what `kdzoo train|distill|pretrain` runs, in Python;
- `kdzoo.create_model(arch, num_classes, in_channels)`, `kdzoo.load_model(run_folder_or_file)`;
- `kdzoo.list_models()`, `kdzoo.list_methods()`, `kdzoo.list_datasets()`, `kdzoo.list_regimes()`;
- `kdzoo.losses`: the methods' pure loss functions;
- `kdzoo.load_plugins()`: import the plugins installed under the `kdzoo.plugins` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdzoo.version import __version__

if TYPE_CHECKING:  # the names below load lazily: `import kdzoo` stays light for the CLI
    from kdzoo.api.catalog import create_model, list_datasets, list_methods, list_models, list_regimes, load_model
    from kdzoo.api.distiller import Distiller, DistillerOutput
    from kdzoo.api.run import RunResult, run
    from kdzoo.plugins import load_plugins

_LAZY = {
    "Distiller": "kdzoo.api.distiller",
    "DistillerOutput": "kdzoo.api.distiller",
    "run": "kdzoo.api.run",
    "RunResult": "kdzoo.api.run",
    "create_model": "kdzoo.api.catalog",
    "load_model": "kdzoo.api.catalog",
    "list_models": "kdzoo.api.catalog",
    "list_methods": "kdzoo.api.catalog",
    "list_datasets": "kdzoo.api.catalog",
    "list_regimes": "kdzoo.api.catalog",
    "load_plugins": "kdzoo.plugins",
}
__all__ = ["__version__", "losses", *_LAZY]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "losses":
        return importlib.import_module("kdzoo.api.losses")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
