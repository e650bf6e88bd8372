"""One tiny registry class shared by models, methods, metrics and datasets.

A new model/method/metric/dataset is one file and one decorator; the CLI, the config schema and
the Snakemake wildcard constraints all read the names from here, so nothing is listed twice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from quantface.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table with a decorator for registration and helpful lookup errors."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = modules  # imported lazily so registration happens on first lookup
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def describe(self) -> dict[str, str]:
        """Name -> first docstring line, for `quantface methods|metrics|datasets|models`."""
        self._load()
        out = {}
        for name, obj in sorted(self._items.items()):
            text = getattr(obj, "doc", None) or getattr(obj, "__doc__", None) or ""
            doc = text.strip().splitlines()
            out[name] = doc[0] if doc else ""
        return out


MODELS: Registry = Registry(
    "model",
    ("quantface.models.tiny", "quantface.models.osdface", "quantface.models.random_osdface"),
)
METHODS: Registry = Registry(
    "method",
    (
        "quantface.methods.reference",
        "baselines.maxmin",
        "baselines.smoothquant",
        "baselines.quarot",
        "baselines.svdquant",
        "quantface.methods.quantface",
        "baselines.qdiffusion",
        "baselines.passionsr",
        "baselines.efficientdm",
    ),
)
METRICS: Registry = Registry(
    "metric", ("quantface.metrics.iqa", "quantface.metrics.identity", "quantface.metrics.fid")
)
DATASETS: Registry = Registry("dataset", ("quantface.data.datasets", "quantface.data.folders"))
