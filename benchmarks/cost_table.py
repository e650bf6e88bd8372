"""Cost table of every method at W4A4 (QuantFace-MP at mp4): the tiny restorer and SD-2.1 shapes.

    PYTHONPATH=. python benchmarks/cost_table.py [--methods maxmin,svdquant] [--no-sd]

Tiny: a method's cost depends on its structure (which layers, bits, transforms, ranks), not on
its training budget, so where the DAG's `results/tiny/<method>/<bits>/cost.json` is absent the
method is run here with minimal budgets on the default tiny architecture (random UNet weights)
and 8 random calibration images.

SD-2.1 (OSDFace: UNet + VAE quantized, the VRE FP32): calibrating SD-2.1 on this CPU is out of
reach, so the per-method cost is computed *analytically*: each method runs (minimal budgets,
random weights) on an SD-2.1-*structured* micro model (same block types and layers per block,
hence the same module names, widths / 10-40), and its layout is transferred by name onto the
SD-2.1 bundle built on the meta device: per-site bits (QuantFace-MP: the micro model's ILP
allocation, a stand-in), input transforms, split flags. Shape-dependent choices are re-derived
on SD shapes with each method's own rule: low-rank ranks (`RANK_RULES`), split points
(`shortcut_splits`), SVDQuant's group size (its native `QuantScheme`). Then `cost_table` counts it, MACs at
512 px by a meta-device forward (shapes only).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from baselines import qdiffusion, svdquant
from quantface.methods import qdlora
from quantface.methods import quantface as qf
from quantface.methods.pipeline import quantize_bundle
from quantface.models.osdface import OSDFaceRestorer
from quantface.models.sd21 import SD21_UNET, SD21_VAE, sd21_osdface
from quantface.quant.apply import calibrate_weights, current_layout, plan_of
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import FP_BITS, LOWRANK_BITS, cost_table
from quantface.quant.lowrank import capped_rank
from quantface.quant.plan import BitPlan, parse_bits
from quantface.quant.specs import LayerQuant
from quantface.quant.wrap import quantizers, wrap_model

METHODS_AND_BITS = [
    ("maxmin", "w4a4"),
    ("qdiffusion", "w4a4"),
    ("smoothquant", "w4a4"),
    ("quarot", "w4a4"),
    ("passionsr", "w4a4"),
    ("efficientdm", "w4a4"),
    ("svdquant", "w4a4"),
    ("quantface", "w4a4"),
    ("quantface_mp", "mp4"),
]
FAST = {  # budgets only: the structure (and so the cost) does not depend on them
    "qdiffusion": {"w_iters": 1, "a_iters": 1, "n_samples": 2, "batch_size": 2},
    "passionsr": {"let_steps": 1, "lbq_steps": 1},
    "efficientdm": {"steps": 1},
    "quantface": {"steps": 1},
    "quantface_mp": {"steps": 1, "sensitivity_images": 1},
}
SVDQ, QF = svdquant.SVDQuantOptions(), qf.QuantFaceOptions()  # the defaults
RANK_RULES = {  # (out channels, fan-in) -> rank of the saved low-rank branch, per method
    "svdquant": lambda o, f: capped_rank(SVDQ.rank, o, f, SVDQ.max_rank_fraction),
    "quantface": lambda o, f: 2 * max(1, capped_rank(QF.rank, o, f, QF.max_rank_fraction)),
}
RANK_RULES["quantface_mp"] = RANK_RULES["quantface"]
assert qdlora.BRANCHES[0] == "both"  # QuantFace's default: SVD + LoRA branch, rank r each


def micro_sd_structured() -> OSDFaceRestorer:
    """SD-2.1's block structure (so its module names) at micro widths, with a micro VRE."""
    unet = {
        **SD21_UNET,
        "block_out_channels": [16, 32, 64, 64],
        "attention_head_dim": [2, 2, 4, 4],
        "cross_attention_dim": 16,
        "norm_num_groups": 8,
        "sample_size": 8,
    }
    vae = {**SD21_VAE, "block_out_channels": [8, 16, 32, 32], "norm_num_groups": 4}
    vre = {"resolution": 32, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1}
    vre.update(attn_resolutions=[16], z_channels=16, n_embed=16, embed_dim=16, n_tokens=8)
    vre.update(norm_groups=4, context_dim=16)
    cfg = {"unet": unet, "vae": vae, "vre": vre, "image_size": 64, "latent_sampling": "mode"}
    torch.manual_seed(0)
    return OSDFaceRestorer(cfg).eval()


def run_method(fp, method: str, bits: str, n_images: int = 8):
    s = parse_bits(bits)
    images = torch.rand(n_images, 3, fp.image_size, fp.image_size)
    calib = collect_calibration(copy.deepcopy(fp), images, 4, 64)
    plan = BitPlan.uniform(fp.quant_targets(), s.w_bits, s.a_bits)
    t0 = time.perf_counter()
    model = quantize_bundle(method, fp, calib, plan, FAST.get(method, {})).model
    return model, time.perf_counter() - t0


def tiny_costs(methods: list[tuple[str, str]]) -> dict[str, dict]:
    from quantface.models.checkpoint import load_bundle
    from quantface.models.tiny import TinyRestorer

    fp_path = Path("results/tiny/fp/model.pt")
    fp = load_bundle(fp_path)[0] if fp_path.is_file() else TinyRestorer().eval()
    out = {"fp": dict(cost_table(fp, BitPlan({}))["total"], source="FP32")}
    for method, bits in methods:
        saved = Path(f"results/tiny/{method}/{bits}/cost.json")
        if saved.is_file():
            out[method] = dict(json.loads(saved.read_text())["total"], source=str(saved))
            continue
        model, sec = run_method(fp, method, bits)
        out[method] = dict(cost_table(model, plan_of(model))["total"], source=f"run {sec:.0f} s")
    return out


def transfer(layout: dict[str, LayerQuant], sd: OSDFaceRestorer, method: str):
    """The micro model's layout on SD-2.1 shapes (see the module docstring)."""
    splits = qdiffusion.shortcut_splits(sd)
    modules = dict(sd.named_modules())
    out = {}
    for name, lq in layout.items():
        mod = modules.get(name)
        a, w, t = lq.a, lq.w, lq.transform
        if lq.kind != "matmul":
            o, fan_in, c_in = mod.weight.shape[0], mod.weight[0].numel(), mod.weight.shape[1]
            if a.granularity == "group" or w.granularity == "group":  # SVDQuant's per-group
                scheme = svdquant.SVDQuant().native_scheme(SVDQ)
                a, w = scheme.act_spec(a.bits, lq.kind, c_in), scheme.weight_spec(w.bits, c_in)
            if t.lowrank:
                t = replace(t, lowrank=RANK_RULES[method](o, fan_in))
        out[name] = LayerQuant(lq.kind, a, w, t, splits.get(name, 0) if lq.split else 0)
    return out


def sd_costs(methods: list[tuple[str, str]]) -> dict[str, dict]:
    micro = micro_sd_structured()
    sd = sd21_osdface()
    sites = sd.quant_targets()
    assert set(sites) == set(micro.quant_targets()), "the micro model must share SD's names"
    out = {"fp": dict(cost_table(sd, BitPlan({}))["total"], source="FP32")}
    vre_macs = embedder_macs(sd)
    for method, bits in methods:
        model, _ = run_method(micro, method, bits, n_images=4)
        sd = sd21_osdface()
        wrap_model(sd, transfer(current_layout(model), sd, method))
        calibrate_weights(sd)  # on meta: gives each quantizer its parameter shapes
        for q in quantizers(sd).values():
            if not q.calibrated:
                q.set_range(torch.zeros((), device="meta"), torch.ones((), device="meta"))
        cost = cost_table(sd, plan_of(sd))
        out[method] = dict(cost["total"], source="transferred from the micro run")
        out[method]["linear_ops_reduction"] = linear_ops_reduction(cost["rows"], vre_macs)
    return out


def embedder_macs(bundle: OSDFaceRestorer) -> int:
    """MACs of the FP VRE at the bundle's input size (its convs and linears, by hooks)."""
    total = [0]

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features
        else:
            k = int(torch.tensor(mod.kernel_size).prod())
            total[0] += out.numel() * mod.in_channels // mod.groups * k

    handles = [
        m.register_forward_hook(hook)
        for m in bundle.embedder.modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    s = bundle.image_size
    with torch.no_grad():
        bundle.embedder(torch.zeros(1, 3, s, s, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def linear_ops_reduction(rows: list[dict], fp_macs: int) -> float:
    """1 - sum MACs * max(w, a) / 32 / sum MACs, the VRE's MACs at 32 bit: "ops" linear in bits.

    One reading of the paper's "~82.91 % operations" (pure BOPs give >= 98 % at W4A4). Low-rank
    branch MACs are extra work at 16 bit, added to the numerator only (not in the FP model).
    """
    macs = sum(r["macs"] for r in rows) + fp_macs
    scaled = sum(r["macs"] * max(r["w_bits"], r["a_bits"]) for r in rows) + fp_macs * FP_BITS
    scaled += sum(r["lowrank_macs"] for r in rows) * LOWRANK_BITS
    return 1 - scaled / FP_BITS / macs


def print_table(title: str, costs: dict[str, dict]) -> None:
    print(f"\n## {title}\n")
    cols = "| method | params M | param bits red. | size MB | extra FP params | MACs G | BOPs T"
    print(cols + " | BOPs red. | low-rank MACs G | online ops G | source |")
    print("|" + "---|" * 11)
    for m, t in costs.items():
        online = (t["online_scale_ops"] + t["online_hadamard_ops"]) / 1e9 if m != "fp" else 0
        print(
            f"| {m} | {t['params'] / 1e6:.3f} | {100 * t['param_bits_reduction']:.2f} % | "
            f"{t['size_bytes'] / 1e6:.3f} | {t['extra_fp_params']:,} | {t['macs'] / 1e9:.3f} | "
            f"{t['bops'] / 1e12:.3f} | {100 * t['bops_reduction']:.2f} % | "
            f"{t['lowrank_macs'] / 1e9:.3f} | {online:.3f} | {t['source']} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help="comma-separated subset (default: all nine)")
    p.add_argument("--no-sd", action="store_true", help="skip the SD-2.1 table")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny table")
    args = p.parse_args()
    torch.set_num_threads(2)
    chosen = [
        (m, b) for m, b in METHODS_AND_BITS if not args.methods or m in args.methods.split(",")
    ]
    print(__doc__.split("\n\n")[0])
    print(
        "Counting (quant/cost.py): quantized weights at w_bits; per-channel/group step sizes and "
        "zero points, biases, norms, the FP embedder, smoothing scales at 32 bit; low-rank "
        "branches at 16 bit; Hadamard signs at 1 bit. MACs: Linear/Conv2d/attention matmuls of "
        "UNet + VAE at the model's input size; BOPs = MACs x w_bits x a_bits (16 x 16 for "
        "low-rank MACs). Online scale/Hadamard ops are run-time adds/multiplies, reported apart."
    )
    if not args.no_tiny:
        print_table("tiny restorer (128 px), W4A4 (QuantFace-MP: mp4)", tiny_costs(chosen))
    if not args.no_sd:
        sd = sd_costs(chosen)
        print_table("OSDFace on SD-2.1 shapes (512 px), W4A4 (QuantFace-MP: mp4)", sd)
        print("\nParameter-bit reduction vs the paper's ~84.85 % (UNet + VAE at 4 bit, VRE FP32;")
        print("its own arithmetic 1 - (949.56 M x 4/32 + 29.57 M) / 979.13 M = 84.86 %):")
        for m, t in sd.items():
            if m != "fp":
                print(
                    f"  {m:13s} params {100 * t['param_bits_reduction']:.2f} %   'ops' linear in "
                    f"bits (VRE FP32) {100 * t['linear_ops_reduction']:.2f} %   (paper ~82.91 %)"
                )


if __name__ == "__main__":
    main()
