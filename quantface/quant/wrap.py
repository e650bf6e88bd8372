"""Wrapping a model for quantization and back: sites, wrap/unwrap, and the quantizers' roles.

`wrap_model` replaces every site a layout names by its quantized counterpart (layers.py) in
place, creating each layer's transforms with identity values; `unwrap_model` gives back float
layers computing the same function, the transforms folded into their weights.
"""

from __future__ import annotations

from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from quantface.quant.attention import QuantAttnProcessor
from quantface.quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear, QuantMatMul
from quantface.quant.quantizer import UniformQuantizer
from quantface.quant.specs import MATMUL_SITES, LayerQuant


def quant_sites(root: nn.Module, prefixes: tuple[str, ...]) -> dict[str, str]:
    """All quantizable sites under the given sub-module prefixes: name -> kind.

    Linear and Conv2d layers are sites; every diffusers `Attention` adds two matmul sites
    `<attn>.qk_matmul` and `<attn>.av_matmul`.
    """
    sites: dict[str, str] = {}
    for name, mod in root.named_modules():
        if not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        if isinstance(mod, QuantMatMul):
            continue
        if isinstance(mod, nn.Linear):
            sites[name] = "linear"
        elif isinstance(mod, nn.Conv2d):
            sites[name] = "conv2d"
        elif isinstance(mod, Attention):
            for site in MATMUL_SITES:
                sites[f"{name}.{site}"] = "matmul"
    return sites


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


_QUANT_CLS = {"linear": QuantLinear, "conv2d": QuantConv2d}
_QUANT_PROCESSOR = QuantAttnProcessor()


def wrap_model(root: nn.Module, layout: dict[str, LayerQuant]) -> None:
    """Replace every site named in `layout` by its quantized counterpart, in place."""
    for name, lq in layout.items():
        parent, attr = _parent(root, name)
        if lq.kind == "matmul":
            if not isinstance(parent, Attention):
                raise TypeError(f"matmul site {name} is not inside a diffusers Attention")
            parent.add_module(attr, QuantMatMul(lq))
            parent.set_processor(_QUANT_PROCESSOR)
            continue
        mod = getattr(parent, attr)
        if isinstance(mod, QuantLayerMixin):
            raise TypeError(f"layer {name} is already quantized")
        setattr(parent, attr, _QUANT_CLS[lq.kind].from_float(mod, lq))


def unwrap_model(root: nn.Module) -> None:
    """Undo `wrap_model`: float layers with the very same weights, default attention processor."""
    for name, mod in list(root.named_modules()):
        if isinstance(mod, QuantLayerMixin):
            parent, attr = _parent(root, name)
            setattr(parent, attr, mod.to_float())
    for mod in root.modules():
        if isinstance(mod, Attention) and isinstance(mod.processor, QuantAttnProcessor):
            for site in MATMUL_SITES:
                if hasattr(mod, site):
                    delattr(mod, site)
            mod.set_processor(AttnProcessor2_0())


def quantizers(root: nn.Module) -> dict[str, UniformQuantizer]:
    """Every quantizer under root by its full module name."""
    return {n: m for n, m in root.named_modules() if isinstance(m, UniformQuantizer)}


def quantizer_roles(root: nn.Module) -> list[tuple[UniformQuantizer, str]]:
    """Every site quantizer under root with its role: "weight" (a layer's weight) or "act".

    The role comes from the site that owns the quantizer, never from its attribute name: a
    matmul's second operand lives in `weight_quantizer` but is an activation (K^T or V).
    """
    roles: list[tuple[UniformQuantizer, str]] = []
    for mod in root.modules():
        if isinstance(mod, QuantLayerMixin | QuantMatMul):
            roles += mod.layer_quantizers()
    return roles


def set_quant_mode(root: nn.Module, mode: str, which: str = "all") -> None:
    """Set the mode of the activation quantizers ("act"), weight quantizers ("weight") or both."""
    if which not in ("all", "act", "weight"):
        raise ValueError(f"which must be all|act|weight, got {which!r}")
    for q, role in quantizer_roles(root):
        if which in ("all", role):
            q.mode = mode
