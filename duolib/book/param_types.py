"""Typed papermill parameters: a chapter refuses a parameter of the wrong type or an unknown name at once.

papermill's ``-p NAME VALUE`` injects ``NAME = VALUE`` after a notebook's ``parameters`` cell whatever the
name or type (``-p seed abc`` injects a string; ``-p nsequences 2``, a typo, only warns and runs with the
defaults).  The parameters cell declares each parameter with a type (``seed: int = 0``); :func:`check_parameters`
(called by ``notebook_setup``, the first thing every chapter does) compares what the kernel ran against it.
"""

from __future__ import annotations

import ast
import json
import types
import typing
from pathlib import Path

#: The names a parameters cell's annotations may use.
ANNOTATION_NAMES = {"Optional": typing.Optional, "Union": typing.Union, "list": list, "dict": dict, "int": int,
                    "float": float, "str": str, "bool": bool, "None": None}


def declared_parameters(source: str) -> dict[str, str]:
    """``name -> annotation`` (as written) of a parameters cell's ``name: type = default`` lines."""
    return {n.target.id: ast.unparse(n.annotation) for n in ast.parse(source).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def assigned_names(source: str) -> list[str]:
    """The names an injected parameters cell assigns."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    return [t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]


def matches(value, annotation) -> bool:
    """Whether ``value`` has the annotated type (``bool`` is not an ``int``; an ``int`` is a ``float``)."""
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(annotation))
    if origin is not None:
        annotation = origin
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, annotation)


def notebook_parameters(root: Path) -> dict[str, tuple[set[str], dict[str, str]]]:
    """notebook name -> (the sources of its code cells, its declared parameters), over ``root/notebooks``."""
    out = {}
    for path in sorted((Path(root) / "notebooks").glob("*.ipynb")):
        code, declared = set(), {}
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                code.add("".join(cell["source"]).strip())
                if "parameters" in cell["metadata"].get("tags", []):
                    declared = declared_parameters("".join(cell["source"]))
        out[path.stem] = (code, declared)
    return out


def check_parameters(root: Path, namespace: dict, history: list[str]) -> None:
    """ValueError naming the parameter, its value and its declared type, or the unknown names, for the
    notebook whose cells ``history`` (the cells the kernel ran) holds most of; nothing for other code."""
    ran = {s.strip() for s in history}
    scores = {name: len(code & ran) for name, (code, declared) in notebook_parameters(root).items() if declared}
    if not scores or max(scores.values()) == 0:
        return
    notebook = max(scores, key=scores.get)
    found = notebook_parameters(root)[notebook]
    declared = found[1]
    allowed = ", ".join(f"{n}: {a}" for n, a in declared.items())
    injected = [n for s in history if s.lstrip().startswith("# Parameters") for n in assigned_names(s)]
    unknown = sorted(set(injected) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for notebook {notebook}; its parameters are "
                         f"{allowed} (papermill --help-notebook notebooks/{notebook}.ipynb)")
    for name, text in declared.items():
        annotation = eval(text, {"__builtins__": {}}, dict(ANNOTATION_NAMES))  # noqa: S307 (names listed above only)
        value = namespace.get(name)
        if not matches(value, annotation):
            raise ValueError(f"parameter {name}={value!r} of notebook {notebook} must be {text} "
                             f"(papermill -p {name} VALUE, e.g. the default: see papermill --help-notebook "
                             f"notebooks/{notebook}.ipynb)")


def check_kernel_parameters(root: Path) -> None:
    """:func:`check_parameters` in the running IPython kernel (nothing outside one)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        check_parameters(root, shell.user_ns, list(shell.user_ns.get("In", [])))
