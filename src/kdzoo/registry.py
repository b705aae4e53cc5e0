"""A tiny name -> object registry shared by models, datasets, methods and regimes."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from kdzoo.errors import KdzooError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._descriptions[name] = description or _first_doc_line(obj)
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:  # a process that has not loaded the installed plugins yet (a worker)
            from kdzoo.plugins import load_plugins

            load_plugins()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see `kdzoo list {self.kind}s`"
            raise KdzooError(f"unknown {self.kind} {name!r}{hint}") from None

    def describe(self, name: str) -> str:
        return self._descriptions.get(name, "")

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def _first_doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
