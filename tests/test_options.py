"""Method options: one frozen dataclass per method, and the schema and config/README.md that
repeat them checked against it (names, types, defaults)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml

from quantface.config import schema
from quantface.errors import ConfigError
from quantface.methods.options import Options
from quantface.methods.quantface_options import QuantFaceMPOptions, QuantFaceOptions
from quantface.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "config" / "README.md"
SCHEMA = ROOT / "quantface" / "schemas" / "config.schema.yaml"
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def options_of(name: str) -> type[Options]:
    """A registered method's options dataclass (the base, with no fields, for none)."""
    return getattr(METHODS.get(name), "options", Options)


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _schema_of(tp: Any) -> dict[str, Any]:
    """What the schema says of an option of type `tp`: its `type` (a set) or `enum`, `items`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        out: dict[str, Any] = {"type": set()}
        for a in args:
            out["type"] |= {"null"} if a is type(None) else _schema_of(a)["type"]
        return out
    if origin is tuple:
        return {"type": {"array"}, "items": _schema_of(args[0])}
    return {"type": {JSON_TYPES[tp]}}


def _schema_says(prop: dict[str, Any]) -> dict[str, Any]:
    if "enum" in prop:
        return {"enum": prop["enum"]}
    t = prop["type"]
    out: dict[str, Any] = {"type": set(t) if isinstance(t, list) else {t}}
    if "items" in prop:
        out["items"] = _schema_says(prop["items"])
    return out


def test_every_method_has_frozen_typed_options_with_defaults():
    for name in METHODS.names():
        cls = options_of(name)
        assert issubclass(cls, Options) and cls.__dataclass_params__.frozen, name
        for key, tp in cls.types().items():
            default = cls.defaults()[key]
            assert default is not dataclasses.MISSING, (name, key)
            # the default is a value of its own type
            assert cls.from_dict({key: _json(default)}, name) == cls(), (name, key, tp)


def test_the_schema_states_each_method_s_options_with_their_types():
    subschemas = schema()["properties"]["method_options"]["properties"]
    assert set(subschemas) == set(METHODS.names())
    for name in METHODS.names():
        cls, sub = options_of(name), subschemas[name]
        assert sub["additionalProperties"] is False, name
        props = sub.get("properties", {})
        assert set(props) == set(cls.defaults()), name
        for key, tp in cls.types().items():
            assert _schema_says(props[key]) == _schema_of(tp), (name, key)
            if "default" in props[key]:
                assert props[key]["default"] == _json(cls.defaults()[key]), (name, key)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (safe_load keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        assert not twice, f"line {node.start_mark.line + 1}: {twice} written twice"
        return super().construct_mapping(node, deep=deep)


def test_the_schema_writes_no_key_twice():
    yaml.load(SCHEMA.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def readme_options() -> dict[str, dict[str, str]]:
    """method -> {option: its [default] as written} from config/README.md's options table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Method options", 1)[1].split("\n## ", 1)[0]
    out: dict[str, dict[str, str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        method, keys = _cells(line)[:2]
        method = method.strip("`")
        row = out.setdefault(method, {})
        if (base := re.fullmatch(r"every `(\w+)` key, plus:", keys)) is not None:
            row.update(out[base[1]])
            continue
        found = re.findall(r"`(\w+)` \[([^\]]*)\]", keys)
        assert found and ", ".join(f"`{k}` [{v}]" for k, v in found) == keys, line
        for key, default in found:
            assert key not in row, (method, key)  # one row per option
            row[key] = default
    return out


def readme_value(text: str) -> Any:
    """A README default: true/false, null, a list (`[3, 4, 5, 6]`), a number, else the word."""
    if "," in text:
        return [readme_value(t.strip()) for t in text.split(",")]
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_the_readme_table_lists_each_method_s_options_with_their_defaults():
    table = readme_options()
    for name in METHODS.names():
        defaults = options_of(name).defaults()
        assert set(table.get(name, {})) == set(defaults), name
        for key, default in defaults.items():
            value, default = readme_value(table[name][key]), _json(default)
            assert (type(value) is bool, value) == (type(default) is bool, default), (name, key)
    assert set(table) <= set(METHODS.names())


def test_options_reject_unknown_keys_and_wrong_values_in_one_line():
    with pytest.raises(ConfigError) as e:
        QuantFaceOptions.from_dict({"ranks": 4, "alpah": 1}, "quantface")
    assert str(e.value).startswith("method_options.quantface: unknown option(s) alpah, ranks; ")
    assert "known: act_granularity, alpha, balancing," in str(e.value)
    cases = [
        ({"balancing": "all"}, "balancing: 'all' is not one of both, scale, rht, none"),
        ({"rank": True}, "rank: True is not an integer"),
        ({"rank": 4.0}, "rank: 4.0 is not an integer"),
        ({"alpha": "0.5"}, "alpha: '0.5' is not a number"),
        ({"rotate_attention": 1}, "rotate_attention: 1 is not a boolean"),
        ({"candidates": 4}, "candidates: 4 is not a list of integers"),
        ({"candidates": [4, 4.5]}, "candidates: 4.5 is not an integer"),
        ({"budget": "4"}, "budget: '4' is not a number or null"),
        ({"perceptual": None}, "perceptual: None is not a string"),
    ]
    for cfg, message in cases:
        with pytest.raises(ConfigError, match=re.escape(f"method_options.quantface_mp.{message}")):
            QuantFaceMPOptions.from_dict(cfg, "quantface_mp")


def test_options_coerce_ints_to_floats_and_lists_to_tuples():
    opts = QuantFaceMPOptions.from_dict(
        {"alpha": 1, "lr": 1, "candidates": [6, 4], "budget": 5, "seed": 3}, "quantface_mp"
    )
    assert type(opts.alpha) is float and opts.alpha == 1.0 and type(opts.lr) is float
    assert opts.candidates == (6, 4) and opts.budget == 5.0 and opts.seed == 3
    assert QuantFaceMPOptions.from_dict({"budget": None}, "quantface_mp").budget is None
    assert QuantFaceMPOptions.from_dict({}, "quantface_mp") == QuantFaceMPOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.alpha = 0.2  # type: ignore[misc]


def test_a_literal_tells_true_from_one():
    """Q-Diffusion's running_stat is true, false or auto: 1 and 0 are not booleans."""
    cls = options_of("qdiffusion")
    assert cls.from_dict({"running_stat": True}, "qdiffusion").running_stat is True
    assert cls.from_dict({"running_stat": False}, "qdiffusion").running_stat is False
    with pytest.raises(ConfigError, match=r"qdiffusion.running_stat: 1 is not one of True"):
        cls.from_dict({"running_stat": 1}, "qdiffusion")
