"""Quantized drop-in layers: `QuantLinear`, `QuantConv2d` and `QuantMatMul`.

`QuantLinear`/`QuantConv2d` subclass the torch layers they replace (so every attribute diffusers
reads, e.g. `in_channels`, is still there) and quantize the weight and the input on the fly.
`QuantMatMul` quantizes both operands of an activation-activation product (attention QK^T and AV,
routed through it by attention.QuantAttnProcessor).

A layer runs the input transforms its layout names (transforms.py: shift, scale, Hadamard,
low-rank branch; a matmul's contraction-dim scale) around the quantized product, in the fixed
order of `LAYER_TRANSFORMS`; each transform owns its arithmetic, folding, cost and storage.

A layer may also *split* its input channels in two (Q-Diffusion's shortcut-splitting quantizer
for the decoder's concatenated skips): channels [:split] and [split:] then have their own
activation quantizer and their own (per-output-channel) weight quantizer over W[:, :split] and
W[:, split:] (`act_quantizer_1`, `weight_quantizer_1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantface.quant.quantizer import UniformQuantizer
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.transforms import (
    INNER,
    LAYER_TRANSFORMS,
    MATMUL_TRANSFORMS,
    Transform,
    spec_of,
    transforms_of,
)


class QuantLayerMixin:
    """Shared by QuantLinear/QuantConv2d: build from a float layer and back, exactly."""

    act_quantizer: UniformQuantizer
    weight_quantizer: UniformQuantizer
    float_cls: type[nn.Module]

    channel_dim: int  # of the input: -1 for Linear, 1 for Conv2d
    split: int = 0  # see the module docstring (split shortcut quantizer)
    transform_kinds: tuple[Transform, ...] = LAYER_TRANSFORMS

    @classmethod
    def from_float(cls, mod: nn.Module, lq: LayerQuant) -> nn.Module:
        q = cls.__new__(cls)
        q.__dict__.update(mod.__dict__)
        q._parameters = dict(mod._parameters)  # same Parameter objects: no copy, exact weights
        q._buffers = dict(mod._buffers)
        q._modules = dict(mod._modules)
        q.act_quantizer = UniformQuantizer(lq.a)
        q.weight_quantizer = UniformQuantizer(lq.w)
        if lq.split:
            n_in = mod.weight.shape[1] * getattr(mod, "groups", 1)
            if getattr(mod, "groups", 1) != 1 or not 0 < lq.split < n_in:
                raise ValueError(f"split {lq.split} needs an ungrouped layer with > split inputs")
            q.split = lq.split
            q.act_quantizer_1 = UniformQuantizer(lq.a)
            q.weight_quantizer_1 = UniformQuantizer(lq.w)
        q.add_transform(lq.transform)
        return q

    def layer_quantizers(self) -> list[tuple[UniformQuantizer, str]]:
        """(quantizer, "act" | "weight") pairs of this layer, split halves included."""
        out = [(self.act_quantizer, "act"), (self.weight_quantizer, "weight")]
        if self.split:
            out += [(self.act_quantizer_1, "act"), (self.weight_quantizer_1, "weight")]
        return out

    def add_transform(self, t: InputTransform) -> None:
        """Create (identity-valued) transform parts; a method or the checkpoint fills them."""
        n_in = self.weight.shape[1] * getattr(self, "groups", 1)
        for kind in self.transform_kinds:
            if getattr(t, kind.field) and not kind.present(self):
                kind.attach(self, t, n_in)

    def transform_spec(self) -> InputTransform:
        return spec_of(self)

    def transform_input(self, x: Tensor) -> Tensor:
        """x -> H((x - d) / s), the input the quantizer and the low-rank branch see."""
        for t in transforms_of(self):
            x = t.on_input(self, x)
        return x

    def _add_branch(self, y: Tensor, x: Tensor) -> Tensor:
        """Add what runs beside the quantized product: the low-rank branch, the shift's W d."""
        for t in reversed(transforms_of(self)):
            y = t.on_output(self, y, x)
        return y

    def quantize_input(self, x: Tensor) -> Tensor:
        """Q_a(x), or the two halves quantized separately for a split layer."""
        if not self.split:
            return self.act_quantizer(x)
        dim = self.channel_dim % x.dim()
        a, b = x.split([self.split, x.shape[dim] - self.split], dim=dim)
        return torch.cat([self.act_quantizer(a), self.act_quantizer_1(b)], dim=dim)

    @torch.no_grad()
    def effective_weight(self) -> Tensor:
        """The FP weight W_eff with layer(x) == float_layer(x, W_eff) when quantizers are off.

        W_eff = (R + L1 L2) H^T diag(1/s) over the input channels (exact algebra, FP64): each
        transform folds its share, from the weight outwards (the reverse of the input order).
        """
        w = self.weight.detach().double()
        for t in reversed(transforms_of(self)):
            w = t.fold_weight(self, w)
        return w.to(self.weight.dtype)

    def to_float(self) -> nn.Module:
        """The float layer computing the same function (transforms folded into weight and bias)."""
        mod = self.float_cls.__new__(self.float_cls)
        mod.__dict__.update(self.__dict__)
        mod._parameters = dict(self._parameters)
        kinds = transforms_of(self)
        if kinds:
            mod._parameters["weight"] = nn.Parameter(
                self.effective_weight(), self.weight.requires_grad
            )
        w_eff = mod._parameters["weight"].detach()
        corrections = [c for t in kinds if (c := t.bias_correction(self, w_eff)) is not None]
        if corrections:
            b = self.bias.detach() if self.bias is not None else None
            for c in corrections:
                b = c if b is None else b + c
            mod._parameters["bias"] = nn.Parameter(b.clone(), requires_grad=False)
        owned = {k for t in self.transform_kinds for k in t.keys}
        mod._buffers = {k: v for k, v in self._buffers.items() if k not in owned}
        drop = {"act_quantizer", "weight_quantizer", "act_quantizer_1", "weight_quantizer_1"}
        mod._modules = {k: v for k, v in self._modules.items() if k not in drop | owned}
        mod.__dict__.pop("split", None)
        return mod

    def quantized_weight(self) -> Tensor:
        return self.quantize_weight(self.weight)

    def quantize_weight(self, w: Tensor) -> Tensor:
        """Q_w(w) with this layer's weight quantizer(s); methods pass W + (LoRA) deltas."""
        if not self.split:
            return self.weight_quantizer(w)
        return torch.cat(
            [
                self.weight_quantizer(w[:, : self.split]),
                self.weight_quantizer_1(w[:, self.split :]),
            ],
            dim=1,
        )


class QuantLinear(QuantLayerMixin, nn.Linear):
    float_cls = nn.Linear
    channel_dim = -1

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform_input(x)
        y = F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)
        return self._add_branch(y, x)


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    float_cls = nn.Conv2d
    channel_dim = 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform_input(x)
        y = self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)
        return self._add_branch(y, x)


class QuantMatMul(nn.Module):
    """`a @ b` with both operands fake-quantized (attention QK^T and AV).

    With an `inner_scale` s (layout `inner`), a's last dim is multiplied and b's dim -2 divided
    by s before quantization: the product is unchanged, the operands' ranges are balanced.
    """

    transform_kinds: tuple[Transform, ...] = MATMUL_TRANSFORMS

    def __init__(self, lq: LayerQuant) -> None:
        super().__init__()
        self.act_quantizer = UniformQuantizer(lq.a)  # first operand (Q, or softmax output)
        self.weight_quantizer = UniformQuantizer(lq.w)  # second operand (K^T, or V)
        if lq.transform.inner:
            self.add_inner_scale(lq.transform.inner)

    def add_inner_scale(self, n: int) -> None:
        """Create an identity contraction-dim scale of length n (a method or checkpoint fills it)."""
        if not INNER.present(self):
            INNER.attach(self, InputTransform(inner=n), n)

    def transform_spec(self) -> InputTransform:
        return spec_of(self)

    def layer_quantizers(self) -> list[tuple[UniformQuantizer, str]]:
        """Both operands are activations: `weight_quantizer` names the second one's slot only."""
        return [(self.act_quantizer, "act"), (self.weight_quantizer, "act")]

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if INNER.present(self):
            a, b = INNER.on_operands(self, a, b)
        return torch.bmm(self.act_quantizer(a), self.weight_quantizer(b))
