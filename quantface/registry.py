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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from quantface.errors import ConfigError

T = TypeVar("T")
# Keywords of a registered call that are the registered object's attributes of the same name
# (the Metric dataclass's presentation fields), so the report reads them without an import.
CALL_ATTRIBUTES = ("label", "decimals", "unit")


@dataclass(frozen=True)
class Entry:
    """Where a name is registered, its description (first docstring or `doc=` line) and the
    attributes its source states as literals (read without importing it)."""

    module: str
    doc: str | None  # None: only the imported object knows it (an entry point's)
    label: str | None = None  # the class's `label = "..."`: how tables and figures name it
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # True: the class body and its bases (all in the same module) define exactly the names in
    # `attrs` (literals) and `dynamic` (methods, computed values), so any other name is not
    # defined; False: other names may be defined (a base class elsewhere, a registered call)
    closed: bool = False
    dynamic: frozenset[str] = frozenset()


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _literal(node: ast.AST, constants: dict[str, Any]) -> Any:
    """The value of a literal expression or of a module-level literal constant's name."""
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return ast.literal_eval(node)


def _assignment(stmt: ast.stmt) -> tuple[ast.expr | None, ast.expr | None]:
    """(target, value) of a one-target `x = v` or `x: T = v` (value None for `x: T`), else
    (None, None)."""
    if isinstance(stmt, ast.AnnAssign):
        return stmt.target, stmt.value
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        return stmt.targets[0], stmt.value
    return None, None


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level `NAME = <literal>` (annotated or not)."""
    out: dict[str, Any] = {}
    for stmt in tree.body:
        target, value = _assignment(stmt)
        if isinstance(target, ast.Name) and value is not None:
            try:
                out[target.id] = ast.literal_eval(value)
            except ValueError:
                pass
    return out


def _class_attrs(
    node: ast.ClassDef, classes: dict[str, ast.ClassDef], constants: dict[str, Any]
) -> tuple[dict[str, Any], set[str], bool]:
    """(literal attributes, other defined names, closed) of a class and its same-module bases;
    closed unless a base is defined elsewhere (an attribute could then come from there) or the
    body defines names in ways this reader does not follow (tuple targets, decorators...)."""
    attrs: dict[str, Any] = {}
    dynamic: set[str] = set()
    closed = True
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            b_attrs, b_dynamic, b_closed = _class_attrs(classes[base.id], classes, constants)
            attrs.update(b_attrs)
            dynamic |= b_dynamic
            closed &= b_closed
        elif not (isinstance(base, ast.Name) and base.id == "object"):
            closed = False
    closed &= not node.decorator_list or all(_is_register(d) for d in node.decorator_list)
    for stmt in node.body:
        target, value = _assignment(stmt)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            dynamic.add(stmt.name)
            attrs.pop(stmt.name, None)
        elif isinstance(target, ast.Name) and value is not None:
            try:
                attrs[target.id] = _literal(value, constants)
                dynamic.discard(target.id)
            except ValueError:  # computed: only the import knows its value
                attrs.pop(target.id, None)
                dynamic.add(target.id)
        elif isinstance(stmt, ast.Assign | ast.AugAssign) or (
            target is not None and not isinstance(target, ast.Name)
        ):
            closed = False  # several or unnamed targets (`x: T` alone defines nothing)
    return attrs, dynamic, closed


def _is_register(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "register"
    )


def _registrations(tree: ast.Module, var: str) -> dict[str, Entry]:
    """name -> Entry (module left empty) of every `<var>.register("name")` in a module's source."""
    found: dict[str, Entry] = {}
    constants = _module_constants(tree)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

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
                    doc = _first_line(ast.get_docstring(node))
                    if isinstance(node, ast.ClassDef):
                        attrs, dynamic, closed = _class_attrs(node, classes, constants)
                    else:
                        attrs, dynamic, closed = {}, set(), False
                    label = attrs.get("label") if isinstance(attrs.get("label"), str) else None
                    found[name] = Entry("", doc, label, attrs, closed, frozenset(dynamic))
        elif isinstance(node, ast.Call) and (name := name_of(node.func)) is not None:
            # a registered call (`METRICS.register("x")(Metric(..., label="X"))`): its keywords
            # are arguments, not necessarily attributes (`folder_dataset(..., doc=...)` makes a
            # class), so only `doc=` and the presentation keywords are read, as literals
            target = node.args[0] if node.args else None
            attrs = {}
            for k in getattr(target, "keywords", []):
                if k.arg in ("doc", *CALL_ATTRIBUTES):
                    try:
                        attrs[k.arg] = _literal(k.value, constants)
                    except ValueError:
                        continue
            doc = attrs.pop("doc", "")
            label = attrs.get("label") if isinstance(attrs.get("label"), str) else None
            found[name] = Entry("", _first_line(doc if isinstance(doc, str) else ""), label, attrs)
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
                        for name, entry in _registrations(tree, self._var).items():
                            index[name] = replace(entry, module=module)
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

    def attr(self, name: str, key: str, default: Any = None) -> Any:
        """An entry's attribute, read from its source where that is certain (a literal it sets,
        or a closed class that does not set it), else from the imported object."""
        entry = self.index().get(name)
        if name not in self._items and entry is not None:
            if key in entry.attrs:
                return entry.attrs[key]
            if entry.closed and key not in entry.dynamic:
                return default
        return getattr(self.get(name), key, default)

    def label(self, name: str) -> str:
        """How tables and figures name an entry: its class's `label`, else its registry name
        (also for names no registry knows, such as ablation variants); a protocol cell
        "<protocol>/<name>" reads "<label> (<protocol>)"."""
        protocol, sep, base = name.partition("/")
        if sep:
            return f"{self.label(base)} ({protocol})"
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
