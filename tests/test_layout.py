"""The package's floors: duolib's imports (read with ast, nothing imported) run one way.

Fails on an upward import or an import cycle, on a ``_private`` name imported from another module,
and on a function-local intra-package import outside ``duolib.cli`` (which keeps ``duo --help`` fast).
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "duolib"

# Lowest floor first; a module may import only from its own floor or below (and never in a cycle).
FLOORS = [
    {"utils", "fileio", "checks", "faces", "moves", "profiles", "stage_config", "presets", "routing", "stats", "folders",
     "manifests", "migrate", "runfolder"},
    {"config", "flops", "data"},
    {"model", "layers", "convert"},
    {"oracle", "train", "retrofit", "retrofit_small", "speculative"},
    {"router"},
    {"book", "bookhtml"},
    {"cli", "cliargs"},
    {"__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
LOCAL_IMPORTS_ALLOWED = {"duolib.cli"}


def module_name(path: Path) -> str:
    parts = ["duolib", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in FLOOR:
        raise AssertionError(f"{module} has no floor: add its top-level name to FLOORS in tests/test_layout.py")
    return FLOOR[top]


def imports_of(path: Path) -> list[dict]:
    """Every intra-package import of one file: target module, imported names, line, function-local or not."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "duolib":
                base_mod = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{base_mod}.{alias.name}"
                target = sub if is_module(sub) else base_mod
                found.append(dict(target=target, name=None if target == sub else alias.name, line=node.lineno,
                                  local=id(node) in local_nodes))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "duolib":
                    found.append(dict(target=alias.name, name=None, line=node.lineno, local=id(node) in local_nodes))
    return found


def graph() -> dict[str, list[dict]]:
    return {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


GRAPH = graph()


def face_free(module: str) -> bool:
    """The package face ``duolib/__init__.py`` loads names lazily (importlib): not part of the floors."""
    return module == "duolib"


def test_every_module_has_a_floor():
    for module in GRAPH:
        if not face_free(module):
            floor_of(module)


def test_no_upward_import():
    bad = [f"{m}:{i['line']} imports {i['target']} (floor {floor_of(i['target'])} above {floor_of(m)})"
           for m, imports in GRAPH.items() if not face_free(m)
           for i in imports if not face_free(i["target"]) and floor_of(i["target"]) > floor_of(m)]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_package_face():
    bad = [f"{m}:{i['line']}" for m, imports in GRAPH.items() if not face_free(m)
           for i in imports if face_free(i["target"])]
    assert not bad, "import from the defining module, not from the duolib face: " + ", ".join(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    edges = {m: {i["target"] for i in imports if i["target"] != m} for m, imports in GRAPH.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_private_name_imported_across_modules():
    bad = [f"{m}:{i['line']} imports {i['name']} from {i['target']}" for m, imports in GRAPH.items()
           for i in imports if i["name"] and i["name"].startswith("_") and not i["name"].startswith("__")]
    assert not bad, "promote the name or move the caller:\n" + "\n".join(bad)


def test_no_function_local_intra_package_import():
    bad = [f"{m}:{i['line']} imports {i['target']} inside a function" for m, imports in GRAPH.items()
           if m not in LOCAL_IMPORTS_ALLOWED for i in imports if i["local"]]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from ..model import DuoForCausalLM\n", ("duolib.model", "DuoForCausalLM", False)),
    ("def f():\n    from .engine import _setup\n", ("duolib.oracle.engine", "_setup", True)),
    ("from .. import flops\n", ("duolib.flops", None, False)),
])
def test_import_reader(tmp_path, monkeypatch, source, expected):
    """The reader resolves relative imports and function-local ones (so the checks above can fail)."""
    path = PKG / "oracle" / "beam.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    (found,) = imports_of(path)
    assert (found["target"], found["name"], found["local"]) == expected


def defined_names(module: str) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments), not those it imports."""
    rel = Path(*module.split(".")[1:])
    path = (PKG / rel).with_suffix(".py") if (PKG / rel).with_suffix(".py").is_file() else PKG / rel / "__init__.py"
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_names_come_from_their_defining_module():
    """No re-exports: every imported name is defined by the module it is imported from."""
    bad = [f"{m}:{i['line']} imports {i['name']} from {i['target']}, which only imports it"
           for m, imports in GRAPH.items() for i in imports
           if i["name"] and not face_free(i["target"]) and i["name"] not in defined_names(i["target"])]
    assert not bad, "\n".join(bad)


# Sizes are guidance, not a cap: a module past LONG_MODULE lines, or a function past LONG_FUNCTION, is
# listed in a warning as a place to look for a real seam (two concepts in one file, a loop that wants a
# helper), never a reason to cut a file at line 399.  A training loop written out in one function, as
# litgpt's ``fit`` is, may be long and right.  Only the backstop (modules past MAX_MODULE, functions past
# MAX_FUNCTION lines) fails the test: at that size a module is always more than one concept.
LONG_MODULE, LONG_FUNCTION = 400, 60
MAX_MODULE, MAX_FUNCTION = 800, 150


def oversized(path: Path, module_lines: int = LONG_MODULE, function_lines: int = LONG_FUNCTION) -> list[str]:
    """A module over ``module_lines`` lines and its functions (methods and nested ones included) over
    ``function_lines`` lines (decorators to last line), each as ``module:line name (n lines)``."""
    source = path.read_text()
    name = module_name(path)
    found = []
    if (n := len(source.splitlines())) > module_lines:
        found.append(f"{name} ({n} lines)")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if (n := node.end_lineno - start + 1) > function_lines:
                found.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_long_modules_and_functions_are_listed_and_none_is_past_the_backstop():
    paths = sorted(PKG.rglob("*.py"))
    long = [item for path in paths for item in oversized(path)]
    if long:
        warnings.warn(f"guidance: over {LONG_MODULE} lines a module or {LONG_FUNCTION} a function; look for a "
                      "real seam there (not a line count to cut at):\n  " + "\n  ".join(long), stacklevel=1)
    bad = [item for path in paths for item in oversized(path, MAX_MODULE, MAX_FUNCTION)]
    assert not bad, (f"over {MAX_MODULE} lines a module or {MAX_FUNCTION} a function: more than one concept; "
                     "split along a real seam:\n" + "\n".join(bad))


def test_size_check_names_a_long_function(monkeypatch):
    """The size check can fail: a 61-line function and a 401-line module are named."""
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    source = "def long_one():\n" + body + "\n" * (400 - 61) + "y = 1\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert oversized(PKG / "utils.py") == ["duolib.utils (401 lines)", "duolib.utils:1 long_one (61 lines)"]
    assert oversized(PKG / "utils.py", MAX_MODULE, MAX_FUNCTION) == []


@pytest.mark.parametrize("package", ["duolib.data", "duolib.train", "duolib.oracle", "duolib.router", "duolib.book"])
def test_each_subpackage_has_a_face_that_resolves(package):
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    assert pkg.__all__, f"{package}/__init__.py exports nothing"
    if hasattr(pkg, "__getattr__"):  # a lazy face: which of a name and a submodule wins would depend on order
        submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        assert not set(pkg.__all__) & submodules, f"{package}: lazy face names equal to submodules"
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, f"{package}.{name}"
