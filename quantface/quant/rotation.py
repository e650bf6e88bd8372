"""Per-head Hadamard rotations fused into attention projections (QuaRot's QK and OV rotations).

Shared by QuaRot and QuantFace: rotating Q and K per head by the same orthonormal H leaves
QK^T unchanged, and rotating V per head with the inverse folded into to_out.0 leaves the
attention output unchanged, so both are exact in FP and flatten the heads' outliers.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from quantface.quant.hadamard import hadamard_matrix
from quantface.quant.smoothing import plain_attention


@torch.no_grad()
def _rotate_rows(lin: nn.Linear, h: torch.Tensor, heads: int) -> None:
    """Per head: W_block <- H^T W_block, b_block <- H^T b_block (output y_head -> y_head H)."""
    w = lin.weight.view(heads, h.shape[0], -1)
    lin.weight.copy_(torch.einsum("dc,hdi->hci", h, w).reshape_as(lin.weight))
    if lin.bias is not None:
        b = lin.bias.view(heads, h.shape[0])
        lin.bias.copy_(torch.einsum("dc,hd->hc", h, b).reshape_as(lin.bias))


@torch.no_grad()
def rotate_attention_heads(attn: Attention) -> bool:
    """Fuse per-head Hadamards: Q, K (QK^T unchanged) and V with its inverse in to_out.0."""
    if not plain_attention(attn):
        return False
    inner = attn.to_q.out_features
    if inner % attn.heads or attn.to_k.out_features != inner or attn.to_v.out_features != inner:
        return False
    d = inner // attn.heads
    h = hadamard_matrix(d, torch.float32).to(attn.to_q.weight.device)
    for lin in (attn.to_q, attn.to_k, attn.to_v):
        _rotate_rows(lin, h, attn.heads)
    out = attn.to_out[0]  # input o -> o B with B = I (x) H: W_o <- W_o B
    w = out.weight.view(out.out_features, attn.heads, d)
    out.weight.copy_(torch.einsum("ohd,dc->ohc", w, h).reshape_as(out.weight))
    return True
