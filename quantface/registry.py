"""One registry class shared by models, methods, metrics and datasets, found without a list.

A new model, method, metric or dataset is one file with one registration: a decorator
(`@METHODS.register("name")`) or a call (`METRICS.register("name")(Metric(..., doc="..."))`),
with the name written out as a string. Nothing lists the files: each registry scans its
packages' source files for those registrations (Python's `ast`, no import), so `quantface
methods`, the config check and the workflow know every name and its one-line description without
importing torch, diffusers or pyiqa; the module that registers a name is imported only when the
object itself is asked for. Another installed package adds entries through an entry point in the
group `quantface.<kind>s` (e.g. `quantface.methods`), whose name is the registered name and whose
value is the module that registers it:

    [project.entry-points."quantface.methods"]
    mymethod = "mypackage.mymethod"
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

from quantface.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """Where a name is registered, and its description (first docstring or `doc=` line)."""

    module: str
    doc: str | None  # None: only the imported object knows it (an entry point's)
    label: str | None = None  # the class's `label = "..."`: how tables and figures name it


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _class_label(node: ast.AST) -> str | None:
    """The string a class body assigns to `label`, if it does."""
    for stmt in getattr(node, "body", []) if isinstance(node, ast.ClassDef) else []:
        if (
            isinstance(stmt, ast.Assign)
            and [getattr(t, "id", None) for t in stmt.targets] == ["label"]
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            return stmt.value.value
    return None


def _registrations(tree: ast.Module, var: str) -> dict[str, tuple[str, str | None]]:
    """name -> (description, label) of every `<var>.register("name")` in a module's source."""
    found: dict[str, tuple[str, str | None]] = {}

    def name_of(node: ast.AST) -> str | None:
        ok = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "register"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == var
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        )
        return node.args[0].value if ok else None

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            for dec in node.decorator_list:
                if (name := name_of(dec)) is not None:
                    found[name] = (_first_line(ast.get_docstring(node)), _class_label(node))
        elif isinstance(node, ast.Call) and (name := name_of(node.func)) is not None:
            target = node.args[0] if node.args else None
            doc = next(
                (
                    k.value.value
                    for k in getattr(target, "keywords", [])
                    if k.arg == "doc" and isinstance(k.value, ast.Constant)
                ),
                "",
            )
            found[name] = (_first_line(doc), None)
    return found


class Registry(Generic[T]):
    """Name -> object table with a decorator for registration and helpful lookup errors."""

    def __init__(self, kind: str, var: str, packages: tuple[str, ...]) -> None:
        self.kind = kind
        self._var = var  # the module-level name registrations are written with, e.g. METHODS
        self._packages = packages
        self._items: dict[str, T] = {}
        self._index: dict[str, Entry] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def index(self) -> dict[str, Entry]:
        """Every name this registry can give: from its packages' sources and entry points."""
        if self._index is None:
            index: dict[str, Entry] = {}
            for package in self._packages:
                spec = importlib.util.find_spec(package)
                for folder in (spec.submodule_search_locations if spec else None) or []:
                    for path in sorted(Path(folder).glob("*.py")):
                        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
                        module = f"{package}.{path.stem}"
                        for name, (doc, label) in _registrations(tree, self._var).items():
                            index[name] = Entry(module, doc, label)
            for ep in entry_points(group=f"quantface.{self.kind}s"):
                index.setdefault(ep.name, Entry(ep.value.split(":")[0], None))
            self._index = index
        return self._index

    def get(self, name: str) -> T:
        if name not in self._items and name in self.index():
            importlib.import_module(self.index()[name].module)
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(set(self.index()) | set(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self.index()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def label(self, name: str) -> str:
        """How tables and figures name an entry: its class's `label`, else its registry name
        (also for names no registry knows, such as ablation variants)."""
        entry = self.index().get(name)
        return entry.label if entry is not None and entry.label else name

    def describe(self) -> dict[str, str]:
        """Name -> one-line description, for `quantface methods|metrics|datasets|models`."""
        out = {}
        for name in self.names():
            entry = self.index().get(name)
            if entry is not None and entry.doc is not None and name not in self._items:
                out[name] = entry.doc
                continue
            obj = self.get(name)
            out[name] = _first_line(getattr(obj, "doc", None) or getattr(obj, "__doc__", None))
        return out


MODELS: Registry = Registry("model", "MODELS", ("quantface.models",))
METHODS: Registry = Registry("method", "METHODS", ("quantface.methods", "baselines"))
METRICS: Registry = Registry("metric", "METRICS", ("quantface.metrics",))
DATASETS: Registry = Registry("dataset", "DATASETS", ("quantface.data",))
