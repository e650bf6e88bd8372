"""Cost accounting: parameter bits, model size, MACs and BOPs, per site and in total.

How we count (also written under every cost table):
- MACs are measured, not estimated: forward hooks count them on one image at the model's input
  size. The counting forward runs on the meta device (shapes only, no arithmetic: the counts
  depend on shapes alone), so a quantize job at 512 px does not pay a full fake-quant pass for
  its cost.json; a model that cannot run on meta is counted by a real forward instead. Linear: out_elements x in_features; Conv2d: out_elements x (C_in/groups) x kh x kw;
  matmul a@b: batch x n x k x m. Norms, activations and softmax are not counted (as in the paper).
- BOPs = MACs x w_bits x a_bits for quantized sites (matmuls: a_bits x a_bits); full-precision
  sites count at 32 x 32.
- Parameter bits: quantized weights at w_bits, plus each quantizer's step size and zero point at
  32 bits; every other parameter (biases, norms, the FP embedder) at 32 bits. Reduction is
  relative to the same model entirely in FP32.
- Input transforms a method could not fold (transforms.py) are extra, never hidden:
  a low-rank branch's weights are stored at 16 bits and its MACs (positions x r x (fan_in + O))
  count in `lowrank_macs` and in BOPs at 16 x 16; a run-time smoothing vector is C_in FP32
  values and C_in multiplies per input position (`online_scale_ops`), a shift as many
  subtractions plus, on a zero-padded conv, one add per output of its border-exact correction
  map; an attention matmul's contraction-dim scale multiplies every element of both operands
  (`online_scale_ops`); an online Hadamard is
  C_in sign bits and `hadamard_ops(C_in)` additions per position (`online_hadamard_ops`).
  Run-time multiplies/adds are reported beside BOPs, not inside them (an add is no MAC), like
  norms; `extra_fp_params` / `extra_fp_param_bits` total what the transforms store. Each
  transform declares its own work (`Transform.run_ops`) and storage (`Transform.stored`); this
  module only sums them, so a new transform is counted without a change here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from quantface.quant.attention import QuantAttnProcessor
from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import LayerQuant
from quantface.quant.target import QuantTarget
from quantface.quant.transforms import (
    EXTRA_KEYS,
    FP_BITS,
    LOWRANK_BITS,
    stored_tensors,
    transform_ops,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _countable_matmuls(bundle: QuantTarget, sites: dict[str, str]) -> Iterator[None]:
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


@contextlib.contextmanager
def on_meta(module: nn.Module) -> Iterator[None]:
    """Every parameter and buffer of `module` swapped for a meta tensor of its shape, then put
    back (the same objects): a forward inside runs on shapes only, without copying the model."""
    saved: list[tuple[dict, str, Any]] = []
    for mod in module.modules():
        for store in (mod._parameters, mod._buffers):
            for key, t in store.items():
                if t is None or t.device.type == "meta":
                    continue
                meta = torch.empty_like(t, device="meta")
                saved.append((store, key, t))
                store[key] = (
                    nn.Parameter(meta, t.requires_grad) if store is mod._parameters else meta
                )
    try:
        yield
    finally:
        for store, key, t in saved:
            store[key] = t


@torch.no_grad()
def measure_macs(
    bundle: QuantTarget,
    sites: dict[str, str],
    extra: dict[str, dict[str, int]] | None = None,
    meta: bool = True,
) -> dict[str, int]:
    """MACs per site for one image, counted by forward hooks (transform work into `extra`).

    With `meta` (default) the forward runs on meta tensors (shapes only); if the model cannot
    (a plain tensor attribute on a real device meets the meta ones) it is counted again by a
    real forward, which gives the same counts at the cost of the arithmetic."""
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
            if extra is not None:
                e = extra.setdefault(name, dict.fromkeys(EXTRA_KEYS, 0))
                for k, v in transform_ops(mod, args, out).items():
                    e[k] += int(v)

        return hook

    def count(device: torch.device) -> None:
        s = bundle.image_size
        bundle.restore(torch.zeros(1, 3, s, s, device=device))

    with _countable_matmuls(bundle, sites):
        for name, kind in sites.items():
            handles.append(bundle.get_submodule(name).register_forward_hook(hook_for(name, kind)))
        try:
            device = next(bundle.parameters()).device
            if device.type == "meta":  # built on meta (SD-2.1 counting): shapes only already
                count(device)
            elif meta:
                try:
                    with on_meta(bundle):
                        count(torch.device("meta"))
                except (RuntimeError, NotImplementedError) as e:
                    log.info("cost: meta-device count failed (%s); counting by a real forward", e)
                    macs.clear()
                    if extra is not None:
                        extra.clear()
                    count(device)
            else:
                count(device)
        finally:
            for h in handles:
                h.remove()
    return macs


def cost_table(bundle: QuantTarget, plan: BitPlan) -> dict[str, Any]:
    """Per-site rows and totals for a (possibly quantized) bundle."""
    sites = bundle.quant_targets()
    extra: dict[str, dict[str, int]] = {}
    macs = measure_macs(bundle, sites, extra)
    modules = dict(bundle.named_modules())
    rows = []
    weight_bits: dict[int, int] = {}  # id(Parameter) -> bits it is stored at
    quantized: set[int] = set()  # ids of quantized weights
    added: set[int] = set()  # ids of parameters a transform added (not in the FP model)
    extra_bits: list[int] = []  # per row: bits of transform values (all of them)
    buffer_bits = 0  # run-time scales and Hadamard signs are buffers, not parameters
    for name, kind in sites.items():
        mod = modules.get(name)  # None for a full-precision attention matmul
        bits = plan.get(name)
        w_bits = bits.w_bits if bits else FP_BITS
        a_bits = bits.a_bits if bits else FP_BITS
        params = mod.weight.numel() if kind != "matmul" else 0
        qparam_bits = 0
        if isinstance(mod, QuantLayerMixin):
            qs = [q for q, _ in mod.layer_quantizers()]
        elif isinstance(mod, QuantMatMul):
            qs = [mod.act_quantizer, mod.weight_quantizer]
            # the operands' own bits (Q-Diffusion keeps the softmax output P at 16 bit, V lower)
            a_bits, w_bits = mod.act_quantizer.spec.bits, mod.weight_quantizer.spec.bits
        else:
            qs = []
        for q in qs:
            qparam_bits += (q.scale.numel() + q.zero_point.numel()) * FP_BITS
        if isinstance(mod, QuantLayerMixin):
            weight_bits[id(mod.weight)] = w_bits
            quantized.add(id(mod.weight))
        stored = stored_tensors(mod) if mod is not None else []
        for st in stored:
            if st.parameter:
                weight_bits[id(st.tensor)] = st.bits
                added.add(id(st.tensor))
            else:
                buffer_bits += st.tensor.numel() * st.bits
        x_values = sum(st.tensor.numel() for st in stored)
        x_bits = sum(st.tensor.numel() * st.bits for st in stored)
        extra_bits.append(x_bits)
        m = macs.get(name, 0)
        ops = extra.get(name, dict.fromkeys(EXTRA_KEYS, 0))
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "params": params,
                "w_bits": w_bits,
                "a_bits": a_bits,
                "param_bits": params * w_bits + qparam_bits + x_bits,
                "macs": m,
                "bops": m * w_bits * a_bits + ops["lowrank_macs"] * LOWRANK_BITS * LOWRANK_BITS,
                "extra_fp_params": x_values,
                **ops,
            }
        )
    params = list(bundle.parameters())
    total_params = sum(p.numel() for p in params)
    param_bits = sum(p.numel() * weight_bits.get(id(p), FP_BITS) for p in params)
    # step sizes and zero points of every quantizer, and the transforms' buffers
    param_bits += sum(
        r["param_bits"] - r["params"] * r["w_bits"] - x for r, x in zip(rows, extra_bits)
    )
    param_bits += buffer_bits
    total_macs = sum(r["macs"] for r in rows)
    fp_bops = total_macs * FP_BITS * FP_BITS
    bops = sum(r["bops"] for r in rows)
    # the reference is the original model in FP32: parameters a transform added are not in it
    fp_bits = sum(p.numel() for p in params if id(p) not in added) * FP_BITS
    return {
        "rows": rows,
        "total": {
            "params": total_params,
            "quantized_weight_params": sum(p.numel() for p in params if id(p) in quantized),
            "param_bits": int(param_bits),
            "fp32_param_bits": fp_bits,
            "size_bytes": int(param_bits) // 8,
            "param_bits_reduction": 1.0 - param_bits / fp_bits,
            "macs": total_macs,
            "bops": bops,
            "fp32_bops": fp_bops,
            "bops_reduction": 1.0 - bops / fp_bops if fp_bops else 0.0,
            "extra_fp_params": sum(r["extra_fp_params"] for r in rows),
            "extra_fp_param_bits": sum(extra_bits),
            **{k: sum(r[k] for r in rows) for k in EXTRA_KEYS},
        },
    }
