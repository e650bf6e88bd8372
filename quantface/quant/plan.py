"""BitPlan: which layer is quantized at which (weight, activation) bit-width.

A plan is the contract between a method and everything downstream (cost accounting, packing,
figures): layers absent from the plan stay full precision, and a method that keeps some layers at
higher precision says so by giving them more bits here and a `reason` in `notes`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from quantface.errors import CheckpointError, ConfigError

BITS_RE = re.compile(r"^w(\d{1,2})a(\d{1,2})$")
MP_RE = re.compile(r"^mp(\d{1,2})$")
PLAN_FORMAT = "quantface-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class LayerBits:
    w_bits: int
    a_bits: int


@dataclass(frozen=True)
class BitSetting:
    """A parsed `{bits}` wildcard: uniform `wXaY` or mixed precision `mpX` (weights X, avg act X)."""

    label: str
    w_bits: int
    a_bits: int
    mixed: bool = False


def parse_bits(label: str) -> BitSetting:
    """Parse 'w4a4' / 'mp4'; anything else is a config error naming the allowed forms."""
    m = BITS_RE.match(label)
    if m:
        w, a = int(m.group(1)), int(m.group(2))
        if not (2 <= w <= 16 and 2 <= a <= 16):
            raise ConfigError(f"bits '{label}': weight and activation bits must be in 2..16")
        return BitSetting(label, w, a)
    m = MP_RE.match(label)
    if m:
        b = int(m.group(1))
        if not 2 <= b <= 16:
            raise ConfigError(f"bits '{label}': the mixed-precision budget must be in 2..16")
        return BitSetting(label, b, b, mixed=True)
    raise ConfigError(f"bits '{label}' is malformed; use wXaY (e.g. w4a4, w6a6) or mpX (e.g. mp4)")


class BitPlan(Mapping[str, LayerBits]):
    """Immutable layer-name -> LayerBits mapping, with free-form notes kept beside it."""

    def __init__(self, bits: Mapping[str, LayerBits], notes: Mapping[str, str] | None = None):
        self._bits = dict(bits)
        self.notes = dict(notes or {})

    @classmethod
    def uniform(cls, layers: Iterable[str], w_bits: int, a_bits: int) -> BitPlan:
        return cls({name: LayerBits(w_bits, a_bits) for name in layers})

    def with_overrides(self, overrides: Mapping[str, LayerBits], reason: str) -> BitPlan:
        """A copy where some layers get other bits; the reason is recorded per layer."""
        unknown = sorted(set(overrides) - set(self._bits))
        if unknown:
            raise KeyError(f"override for layers not in the plan: {unknown[:5]}")
        notes = dict(self.notes)
        notes.update({name: reason for name in overrides})
        return BitPlan({**self._bits, **overrides}, notes)

    def at_least(self, layers: Iterable[str], bits: int, reason: str) -> BitPlan:
        """A copy where the named layers in the plan run at `bits` or more (weights and
        activations); the reason is recorded for each layer it raised."""
        over = {
            n: LayerBits(max(self[n].w_bits, bits), max(self[n].a_bits, bits))
            for n in layers
            if n in self._bits and min(self[n].w_bits, self[n].a_bits) < bits
        }
        return self.with_overrides(over, reason) if over else self

    def __getitem__(self, name: str) -> LayerBits:
        return self._bits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def to_dict(self) -> dict:
        return {
            "layers": {n: {"w_bits": b.w_bits, "a_bits": b.a_bits} for n, b in self._bits.items()},
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> BitPlan:
        return cls(
            {n: LayerBits(int(v["w_bits"]), int(v["a_bits"])) for n, v in d["layers"].items()},
            d.get("notes", {}),
        )

    def save(self, path: str | Path) -> None:
        from quantface import __version__
        from quantface.io import atomic_write_text

        header = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "package_version": __version__}
        atomic_write_text(path, json.dumps({**header, **self.to_dict()}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> BitPlan:
        """A plan.json from `save` (or hand-written: no header); another version is named."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read plan file {path}: {e}") from e
        if (
            not isinstance(d, dict)
            or "layers" not in d
            or d.get("format", PLAN_FORMAT) != PLAN_FORMAT
        ):
            raise CheckpointError(f"{path} is not a plan file ('{PLAN_FORMAT}' with 'layers')")
        if d.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise CheckpointError(
                f"{path} was written by quantface {d.get('package_version', '?')} (plan format "
                f"{d.get('version')}); this version reads format {PLAN_VERSION}: re-run quantize"
            )
        return cls.from_dict(d)
