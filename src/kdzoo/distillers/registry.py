"""The method registry: `kdzoo list methods` and the recipe's `loss:` terms read it."""
from __future__ import annotations

from kdzoo.errors import ConfigError
from kdzoo.registry import Registry

METHODS: Registry = Registry("method")


def register_method(cls):
    """Class decorator: registers a Method subclass under `cls.name`."""
    text = cls.description + (f" [{cls.paper}]" if cls.paper else "")
    METHODS.register(cls.name, text)(cls)
    return cls


def split_term(term: str) -> tuple[str, str]:
    """"peer1.kd" -> ("peer1", "kd"); "kd" -> ("", "kd")."""
    namespace, _, bare = term.rpartition(".")
    return namespace, bare


def method_for_term(term: str):
    """The method class that produces loss term `term` (namespaced or not)."""
    bare = split_term(term)[1]
    for name in METHODS:
        cls = METHODS.get(name)
        if bare in cls.term_names():
            return cls
    raise ConfigError(f"loss.{term}: unknown loss term (methods: {', '.join(METHODS.names())})")
