"""Cost accounting: parameter bits, model size, MACs and BOPs, per site and in total.

How we count (also written under every cost table):
- MACs are measured, not estimated: forward hooks count them on one image at the model's input
  size. Linear: out_elements x in_features; Conv2d: out_elements x (C_in/groups) x kh x kw;
  matmul a@b: batch x n x k x m. Norms, activations and softmax are not counted (as in the paper).
- BOPs = MACs x w_bits x a_bits for quantized sites (matmuls: a_bits x a_bits); full-precision
  sites count at 32 x 32.
- Parameter bits: quantized weights at w_bits, plus each quantizer's step size and zero point at
  32 bits; every other parameter (biases, norms, the FP embedder, extra FP branches a method adds)
  at 32 bits. Reduction is relative to the same model entirely in FP32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from quantface.models.base import RestorerBundle
from quantface.quant.layers import (
    LayerQuant,
    QuantAttnProcessor,
    QuantLayerMixin,
    QuantMatMul,
)
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec

FP_BITS = 32


@contextlib.contextmanager
def _countable_matmuls(bundle: RestorerBundle, sites: dict[str, str]) -> Iterator[None]:
    """Temporarily give full-precision attention a pass-through QuantMatMul to hook."""
    added, processors = [], {}
    for name, kind in sites.items():
        attn_name, _, attr = name.rpartition(".")
        attn = bundle.get_submodule(attn_name) if kind == "matmul" else None
        if attn is None or hasattr(attn, attr):
            continue
        mm = QuantMatMul(LayerQuant("matmul", QuantSpec(8), QuantSpec(8)))
        mm.act_quantizer.mode = mm.weight_quantizer.mode = "off"
        attn.add_module(attr, mm)
        added.append((attn, attr))
        if not isinstance(attn.processor, QuantAttnProcessor):
            processors[id(attn)] = (attn, attn.processor)
            attn.set_processor(QuantAttnProcessor())
    try:
        yield
    finally:
        for attn, attr in added:
            delattr(attn, attr)
        for attn, proc in processors.values():
            attn.set_processor(proc)


@torch.no_grad()
def measure_macs(bundle: RestorerBundle, sites: dict[str, str]) -> dict[str, int]:
    """MACs per site for one image, counted by forward hooks."""
    macs: dict[str, int] = {}
    handles = []

    def hook_for(name: str, kind: str):
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if kind == "linear":
                n = out.numel() * mod.in_features
            elif kind == "conv2d":
                kh, kw = mod.kernel_size
                n = out.numel() * (mod.in_channels // mod.groups) * kh * kw
            else:
                a, b = args
                n = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            macs[name] = macs.get(name, 0) + int(n)

        return hook

    with _countable_matmuls(bundle, sites):
        for name, kind in sites.items():
            handles.append(bundle.get_submodule(name).register_forward_hook(hook_for(name, kind)))
        try:
            s = bundle.image_size
            bundle.restore(torch.zeros(1, 3, s, s))
        finally:
            for h in handles:
                h.remove()
    return macs


def cost_table(bundle: RestorerBundle, plan: BitPlan) -> dict[str, Any]:
    """Per-site rows and totals for a (possibly quantized) bundle."""
    sites = bundle.quant_targets()
    macs = measure_macs(bundle, sites)
    modules = dict(bundle.named_modules())
    rows = []
    weight_bits: dict[int, int] = {}  # id(weight Parameter) -> bits it is stored at
    for name, kind in sites.items():
        mod = modules.get(name)  # None for a full-precision attention matmul
        bits = plan.get(name)
        w_bits = bits.w_bits if bits else FP_BITS
        a_bits = bits.a_bits if bits else FP_BITS
        params = mod.weight.numel() if kind != "matmul" else 0
        qparam_bits = 0
        if isinstance(mod, (QuantLayerMixin, QuantMatMul)):
            for q in (mod.act_quantizer, mod.weight_quantizer):
                qparam_bits += (q.scale.numel() + q.zero_point.numel()) * FP_BITS
        if isinstance(mod, QuantLayerMixin):
            weight_bits[id(mod.weight)] = w_bits
        m = macs.get(name, 0)
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "params": params,
                "w_bits": w_bits,
                "a_bits": a_bits,
                "param_bits": params * w_bits + qparam_bits,
                "macs": m,
                "bops": m * (a_bits * a_bits if kind == "matmul" else w_bits * a_bits),
            }
        )
    params = list(bundle.parameters())
    total_params = sum(p.numel() for p in params)
    param_bits = sum(p.numel() * weight_bits.get(id(p), FP_BITS) for p in params)
    param_bits += sum(r["param_bits"] - r["params"] * r["w_bits"] for r in rows)  # scales, zeros
    total_macs = sum(r["macs"] for r in rows)
    fp_bops = total_macs * FP_BITS * FP_BITS
    bops = sum(r["bops"] for r in rows)
    fp_bits = total_params * FP_BITS
    return {
        "rows": rows,
        "total": {
            "params": total_params,
            "quantized_weight_params": sum(p.numel() for p in params if id(p) in weight_bits),
            "param_bits": int(param_bits),
            "fp32_param_bits": fp_bits,
            "size_bytes": int(param_bits) // 8,
            "param_bits_reduction": 1.0 - param_bits / fp_bits,
            "macs": total_macs,
            "bops": bops,
            "fp32_bops": fp_bops,
            "bops_reduction": 1.0 - bops / fp_bops if fp_bops else 0.0,
        },
    }
