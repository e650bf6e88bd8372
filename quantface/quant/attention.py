"""A diffusers attention processor whose two matmuls are quantization sites.

`QuantMatMul` (layers.py) quantizes both operands of an activation-activation product; this
processor computes attention with two of them (QK^T and AV), so the attention matmuls are
quantized inside diffusers' own `Attention` modules without forking them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor


class QuantAttnProcessor:
    """diffusers' classic attention math with the two matmuls routed through `QuantMatMul`.

    Mirrors `diffusers.models.attention_processor.AttnProcessor` (spatial norm, group norm, 4-D
    inputs, cross attention, masks, residual, output rescale) so FP outputs match the SDPA
    processor to float tolerance; only the matmuls differ.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = _matmul(attn, "qk_matmul", query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.float().softmax(dim=-1).to(value.dtype)
        hidden_states = _matmul(attn, "av_matmul", probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _matmul(attn: Attention, site: str, a: Tensor, b: Tensor) -> Tensor:
    """The site's QuantMatMul when it is quantized, a plain matmul when it is not in the layout."""
    mm = getattr(attn, site, None)
    return mm(a, b) if mm is not None else torch.bmm(a, b)
