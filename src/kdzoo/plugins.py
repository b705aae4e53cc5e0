"""Plugins: your own methods, models and datasets, seen by every kdzoo command without forking kdzoo.

Two ways to load a module that registers them (`@register_method`, `@register_model`, `register_dataset`):

- an entry point in the `kdzoo.plugins` group of an installed package (pyproject.toml:
  `[project.entry-points."kdzoo.plugins"] my_pkg = "my_pkg.kd"`): every CLI verb imports it at start;
- a recipe's `imports: [my_pkg.kd]`: imported when the recipe loads, recorded in the run folder's config.yaml
  and in its checkpoints, so `eval`, `bench`, `sweep`, `report` and `linear-eval` of the run import it too.

A plugin that fails to import is one line naming it and the error (exit 2). Importing a plugin runs its code, as
importing any Python module does; checkpoints stay tensors-only (safetensors) whatever they name here.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from kdzoo.errors import ConfigError

GROUP = "kdzoo.plugins"
_loaded: set[str] = set()
_entry_points: list[str] = []  # the names load_plugins found, once it has run


def import_modules(names: Iterable[str], where: str = "imports") -> None:
    """Import each module once; ConfigError naming the first that fails."""
    for name in names:
        if name in _loaded:
            continue
        if not isinstance(name, str) or not name or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"{where}: {name!r} is not a module name (e.g. my_pkg.kd)")
        try:
            importlib.import_module(name)
        except Exception as err:  # any failure inside the plugin is its own; report it in one line
            detail = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(
                f"{where}: plugin {name} failed to import ({type(err).__name__}{': ' + detail if detail else ''})"
            ) from None
        _loaded.add(name)


def load_plugins() -> list[str]:
    """Import every installed package's `kdzoo.plugins` entry point (once per process); the names loaded."""
    if _entry_points:
        return list(_entry_points[1:])
    from importlib.metadata import entry_points

    names = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        key = f"entry point {point.name}"
        if key not in _loaded:
            try:
                point.load()
            except Exception as err:
                detail = str(err).splitlines()[0] if str(err) else ""
                raise ConfigError(
                    f"plugin {point.name} ({point.value}, entry point of "
                    f"{point.dist.name if point.dist else 'an installed package'}) failed to import "
                    f"({type(err).__name__}{': ' + detail if detail else ''})"
                ) from None
            _loaded.add(key)
        names.append(point.name)
    _entry_points[:] = ["scanned", *names]
    return names
