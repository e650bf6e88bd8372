"""QuantFace part 2: QD-LoRA, quantization-distillation low-rank adaptation.

The paper's figure: every quantized weight is split as

    W = R + (U_r S_r^1/2)(S_r^1/2 V_r^T)        (rank-r truncated SVD of the balanced weight)

R is quantized; beside it run two trainable rank-r branches in full precision: the SVD branch
initialised from the factors above and an ordinary LoRA branch (A ~ N(0, sigma^2), B = 0). Both
branches and the quantizers' step sizes are trained jointly by a distillation loss between the
quantized model's restored image and the frozen FP model's restored image (L_{fp,q}).

Implementation: the two branches are stored as *one* 16-bit `LowRankBranch` of rank 2r whose
down/up factors are the concatenations [S^1/2 V^T ; A] and [U S^1/2 | B]. A sum of two low-rank
products is exactly the product of the concatenated factors, and concatenated parameters get
exactly the gradients the separate branches would, so training is the paper's; storing one
branch keeps the layer format shared with SVDQuant. `branches` selects the ablations: "both",
"svd" (SVD branch only), "lora" (LoRA branch only, R = W), "none" (no branch, no training of
branches; step sizes are still learned when steps > 0).

Unknown in the paper, chosen here (config `method_options.quantface`):
- rank r per branch 16, capped at `max_rank_fraction` 0.05 of the layer's smaller side, so the
  two branches together have the FP16 budget of SVDQuant's single branch (0.1, the relative size
  rank 32 has on SD's 320-channel layers); tiny layers get rank 1-3 per branch;
- sigma = 1/r for A (LoRA's Kaiming-like scale at small fan-in);
- loss L2 on the restored image; Adam, lr 1e-3 for branches and 1e-4 for step sizes (step sizes
  are ~1e-2 in magnitude, so a smaller lr keeps updates relative), cosine decay, 80 steps on
  64-px crops (two per calibration image; both models see the same crop);
- branches stored in FP16 and counted in cost.json (params and MACs at 16 bit).
"""

from __future__ import annotations

import torch

from quantface.quant.layers import QuantLayerMixin
from quantface.quant.lowrank import capped_rank, lowrank_split

BRANCHES = ("both", "svd", "lora", "none")


def branch_ranks(
    weight_shape: torch.Size, rank: int, max_fraction: float, branches: str
) -> tuple[int, int]:
    """(SVD rank, LoRA rank) of one layer."""
    if branches not in BRANCHES:
        raise ValueError(f"QD-LoRA branches must be one of {', '.join(BRANCHES)}, got {branches!r}")
    o, fan_in = weight_shape[0], int(torch.Size(weight_shape[1:]).numel())
    r = max(1, capped_rank(rank, o, fan_in, max_fraction))
    return (r if branches in ("both", "svd") else 0, r if branches in ("both", "lora") else 0)


@torch.no_grad()
def init_qdlora(
    layer: QuantLayerMixin, svd_rank: int, lora_rank: int, gen: torch.Generator
) -> None:
    """Split the layer's (balanced) weight into R + SVD branch and append a zero-output LoRA.

    The layer must already carry a `LowRankBranch` of rank svd_rank + lora_rank. Afterwards the
    layer computes exactly what it did before in full precision (W = R + L1 L2 + B A, B = 0).
    """
    total = svd_rank + lora_rank
    if total == 0:
        return
    branch = layer.lowrank
    if branch.rank != total:
        raise ValueError(f"layer carries a rank-{branch.rank} branch, QD-LoRA needs {total}")
    l1, l2, r = lowrank_split(layer.weight, svd_rank)
    fan_in = l2.shape[1]
    a = torch.randn(lora_rank, fan_in, generator=gen) / max(lora_rank, 1)
    a = a.half().float()  # the branch's storage precision, like the SVD factors
    up = torch.cat([l1, l1.new_zeros(l1.shape[0], lora_rank)], dim=1)
    down = torch.cat([l2, a.to(l2.device)], dim=0)
    branch.set_factors(up, down)
    layer.weight.copy_(r)


def branch_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every low-rank branch factor in the model (what QD-LoRA trains besides step sizes)."""
    params = []
    for mod in model.modules():
        if isinstance(mod, QuantLayerMixin) and "lowrank" in mod._modules:
            params += [mod.lowrank.down, mod.lowrank.up]
    return params


@torch.no_grad()
def round_branches_to_fp16(model: torch.nn.Module) -> None:
    """After training, store the branches at their 16-bit precision (what cost.json counts)."""
    for p in branch_parameters(model):
        p.copy_(p.half().float())
