"""Names that moved in this release: importing one from its old module raises an ImportError that names
its new module (kept for one release; the CHANGELOG lists the moves)."""

from __future__ import annotations


def moved(module: str, table: dict[str, str]):
    """A module-level ``__getattr__`` (PEP 562) for ``module``: a name of ``table`` (old name -> what replaces
    it, dotted) raises ImportError naming its replacement; any other missing name is the usual AttributeError."""

    def __getattr__(name: str):
        if name in table:
            raise ImportError(f"{module}.{name} has moved: use {table[name]} (see the CHANGELOG)")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
