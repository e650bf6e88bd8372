"""Typed method options: one frozen dataclass per method, read from its `method_options` dict.

A method's options are the fields of an `Options` subclass, each with its type and default
(config/README.md documents them at length, the schema checks them at parse time).
`XOptions.from_dict(cfg, "x")` gives the instance: an unknown key, a value of the wrong type or
outside a `Literal`'s values is a one-line ConfigError naming `method_options.x[.key]`. Types
understood: bool, int, float (an int is taken, as a float), str, `Literal[...]` (its values are
the allowed choices), `tuple[T, ...]` (from a list or tuple) and `T | None`. No torch here: the
config check reads QuantFace's options without importing it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

from quantface.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of the options dataclasses (a subclass with no fields: a method without options).

    `training_budget` names the options that are the method's training budget (iterations,
    steps): the budget curves scale them together (benchmarks/budget_curves.py) and every table
    footnote gives their values per row (cost.json `budget`). Empty: a method that does not
    train. (A class attribute, not a field: QuantFace-MP's `budget` option is its bit budget.)
    """

    training_budget: ClassVar[tuple[str, ...]] = ()

    def budget_summary(self) -> str:
        """The training budget as cost.json records it: "steps 40", or "none"."""
        return ", ".join(f"{k} {getattr(self, k)}" for k in self.training_budget) or "none"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Option name -> default, in field order."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def types(cls) -> dict[str, Any]:
        """Option name -> its resolved type."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], method: str) -> Self:
        """The defaults with `d`'s values, each checked and coerced to its field's type."""
        known = cls.defaults()
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"method_options.{method}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        types_ = cls.types()
        values = {k: _coerce(v, types_[k], f"method_options.{method}.{k}") for k, v in d.items()}
        return cls(**values)


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"a list of {_describe(args[0]).partition(' ')[2] or _describe(args[0])}s"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (an int as a float, a list as a tuple), else a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        # `1 == True`: compare types too, so a 1 is not taken for a true
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a, key)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if tp in _NAMES:
        if not _is_a(value, tp):
            raise ConfigError(f"{key}: {value!r} is not {_NAMES[tp]}")
        return float(value) if tp is float else value
    raise TypeError(f"{key}: option type {tp!r} is not supported")
