"""A package's face that loads its names on first use (PEP 562): ``duolib`` and ``duolib.book`` use it, so that
importing them stays light (``duo --help`` imports no torch).  Standard library only."""

from __future__ import annotations

import importlib


def lazy_face(namespace: dict, face: dict[str, str]):
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``: a name of ``face``
    (public name -> the submodule, relative to the package, that defines it) is imported on first use and then
    kept in the namespace; any other missing name is the usual AttributeError."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name in face:
            value = getattr(importlib.import_module(f".{face[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(face))

    return __getattr__, __dir__
