"""What the quantization core asks of a model: the `QuantTarget` protocol.

Why a protocol: the core (quantizers, layers, calibration, ranges, cost, packing, distillation,
reconstruction) must not import the model layer, which imports the core to find its sites. A
model is anything that is an `nn.Module` with these members; `RestorerBundle`
(quantface/models/base.py) is one, and a model of another kind needs nothing from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from torch import Tensor, nn


class QuantTarget(Protocol):
    """An `nn.Module` that restores a batch of LQ images and names its quantization sites."""

    name: str  # its registered model name (a packed file records it to rebuild the model)
    config: dict[str, Any]  # what rebuilds it, with `name`

    @property
    def image_size(self) -> int:
        """The side of the images it restores (the cost count's input)."""
        ...

    def restore(self, lq: Tensor, clamp: bool = True) -> Tensor:
        """The restored images of an LQ batch in [0, 1] (unclamped with `clamp=False`)."""
        ...

    def quant_targets(self) -> dict[str, str]:
        """Quantization site -> its kind ("linear", "conv", "matmul"), in execution order."""
        ...

    # the nn.Module members the core uses
    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...
    def modules(self) -> Iterator[nn.Module]: ...
    def children(self) -> Iterator[nn.Module]: ...
    def get_submodule(self, target: str) -> nn.Module: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...
    def eval(self) -> nn.Module: ...
