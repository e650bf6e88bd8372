"""Run-time input transforms of a quantized site, each owning its forward, folding, cost and storage.

A method that cannot fold a transform into neighbouring weights leaves it on the layer (its
layout's `InputTransform`): a per-channel shift and division of the input (PassionSR's
equivalent transformation, run-time smoothing), an online randomized Hadamard of the input
channels (QuaRot; per pixel for a conv), and a 16-bit low-rank branch reading the transformed,
unquantized input (SVDQuant):

    x' = H((x - d) / s);   y = conv_or_linear(Q_a(x'), Q_w(W)) + b + W_fp d + up(down(x'))

An attention matmul may carry a contraction-dim scale s (`inner`, PassionSR's attention LET):
`Q_a(a diag(s)) @ Q_b(diag(s)^-1 b)`, exactly `a @ b` before quantization. For QK^T the
contraction runs over the head dim (q s, k / s), for AV over the key tokens (P s, V / s).

Each kind is one `Transform` object that knows everything about itself: how to create its
(identity-valued) parts on a host layer, what it does to the input and the output, how it folds
into an equivalent float weight and bias, what extra work it costs per call and which tensors it
stores at how many bits. The quantized layers run `LAYER_TRANSFORMS` / `MATMUL_TRANSFORMS` in
order; `cost.py` and `pack.py` iterate them instead of knowing buffer names. The values live on
the host (buffers, or a child module for the Hadamard and the branch) under the names in `keys`,
so state dicts and checkpoints keep one flat naming.

The shift's output correction is `conv_or_linear(d broadcast over the input, W_fp)`. For a Linear,
an unpadded conv or a conv padded by replication it is a constant per output channel, a saved
FP32 vector (`shift_bias`). A zero-padded conv sees the padding zeros unshifted, so near the
borders fewer taps see d: there the correction is the map `sum_ab M[o,a,b] R_a[i] C_b[j]` with the
saved per-tap sums `M = W_fp d` (`shift_taps`, [O, kh, kw]) and R/C the 0/1 masks of taps that fall
inside the input. It is computed per call from the input size, exactly the official PassionSR
correction `conv(d.expand_as(x), W)` at O kh kw positions' cost instead of a second convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantface.quant.hadamard import hadamard_ops, randomized_hadamard
from quantface.quant.specs import InputTransform

FP_BITS = 32
LOWRANK_BITS = 16
SIGN_BITS = 1
EXTRA_KEYS = ("lowrank_macs", "online_scale_ops", "online_hadamard_ops")


@dataclass(frozen=True)
class Stored:
    """A tensor a transform keeps on its host, named relative to the host, with the bits a
    deployment stores each value at: the cost model counts them, the packer writes them."""

    key: str
    tensor: Tensor
    bits: int
    parameter: bool = False  # a parameter the FP model does not have (else a buffer)


class Transform:
    """One kind of input transform (see the module docstring); stateless, its values on the host."""

    field: ClassVar[str]  # the InputTransform field that asks for it
    keys: ClassVar[tuple[str, ...]]  # the host's buffers / child modules it owns

    def present(self, host: nn.Module) -> bool:
        return self.keys[0] in host._buffers or self.keys[0] in host._modules

    def spec_value(self, host: nn.Module) -> bool | int:
        """Its InputTransform field's value on a host where it is present."""
        return True

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        """Create its identity-valued parts (a method or the checkpoint fills them)."""
        raise NotImplementedError

    def on_input(self, host: nn.Module, x: Tensor) -> Tensor:
        return x

    def on_output(self, host: nn.Module, y: Tensor, x: Tensor) -> Tensor:
        """What it adds beside the quantized product; x is the transformed input."""
        return y

    def fold_weight(self, host: nn.Module, w: Tensor) -> Tensor:
        """Its share of the float weight W_eff (FP64) with float_layer(x, W_eff) == layer(x)."""
        return w

    def bias_correction(self, host: nn.Module, w_eff: Tensor) -> Tensor | None:
        """What the float layer with weight W_eff must add to its bias (None: nothing)."""
        return None

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        """Its extra run-time work for one call, by cost key (cost.py's docstring)."""
        return {}

    def stored(self, host: nn.Module) -> list[Stored]:
        """The tensors it adds to the model, FP32 unless it says otherwise."""
        return [Stored(k, host._buffers[k], FP_BITS) for k in self.keys if k in host._buffers]


def channel_view(host: nn.Module, v: Tensor, ndim: int) -> Tensor:
    """A per-input-channel vector shaped to broadcast along the host's channel dim."""
    shape = [1] * ndim
    shape[host.channel_dim] = -1
    return v.view(shape)


def _positions_and_channels(host: nn.Module, x: Tensor) -> tuple[int, int]:
    c_in = x.shape[host.channel_dim]
    return x.numel() // c_in, c_in


# --- shift ------------------------------------------------------------------------------------
class Shift(Transform):
    """x - d per input channel; the output gets W_fp d back (a bias, or a border-exact map)."""

    field = "shift"
    keys = ("input_shift", "shift_bias", "shift_taps")

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        dev = host.weight.device
        host.register_buffer("input_shift", torch.zeros(n_in, device=dev))
        out = host.weight.shape[0]
        if border_dependent(host):
            host.register_buffer("shift_taps", torch.zeros(out, *host.kernel_size, device=dev))
        else:
            host.register_buffer("shift_bias", torch.zeros(out, device=dev))

    def on_input(self, host: nn.Module, x: Tensor) -> Tensor:
        return x - channel_view(host, host._buffers["input_shift"], x.dim())

    def on_output(self, host: nn.Module, y: Tensor, x: Tensor) -> Tensor:
        sb = host._buffers.get("shift_bias")
        if sb is not None:
            return y + channel_view(host, sb, y.dim())
        taps = host._buffers["shift_taps"]
        return y + border_shift_map(host, taps, x.shape[-2:], y.shape[-2:])

    def bias_correction(self, host: nn.Module, w_eff: Tensor) -> Tensor:
        """W_fp d - W_eff d: W_eff (x - d) + b + W_fp d == W_eff x + (b + W_fp d - W_eff d).

        For a zero-padded conv that is a position-dependent map unless W_eff d == W_fp d per tap
        (true while the weight is W_fp diag(s), the only weight a shift is learned with): then it
        is zero, anything else has no plain-conv equivalent and is refused.
        """
        d = host._buffers["input_shift"]
        taps = host._buffers.get("shift_taps")
        if taps is None:
            sums = w_eff.flatten(2).sum(-1) if w_eff.dim() > 2 else w_eff
            return host._buffers["shift_bias"] - sums @ d
        residual = taps - shift_taps(w_eff, d)
        if residual.abs().max() > 1e-5 * (taps.abs().max() + 1e-12):
            raise ValueError("a padded conv's shift has no plain-conv form once W_eff d != W_fp d")
        return torch.zeros_like(taps[:, 0, 0])

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        """One subtraction per input element; W d folds into the bias except on a zero-padded
        conv, whose correction map adds one per output element."""
        positions, c_in = _positions_and_channels(host, args[0])
        ops = positions * c_in + (out.numel() if "shift_taps" in host._buffers else 0)
        return {"online_scale_ops": ops}


# --- scale ------------------------------------------------------------------------------------
class Scale(Transform):
    """x / s per input channel (run-time smoothing; PassionSR's scale)."""

    field = "scale"
    keys = ("input_scale",)

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        host.register_buffer("input_scale", torch.ones(n_in, device=host.weight.device))

    def on_input(self, host: nn.Module, x: Tensor) -> Tensor:
        return x / channel_view(host, host._buffers["input_scale"], x.dim())

    def fold_weight(self, host: nn.Module, w: Tensor) -> Tensor:
        s = host._buffers["input_scale"]
        return w / s.double().view([1, -1] + [1] * (w.dim() - 2))

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        positions, c_in = _positions_and_channels(host, args[0])
        return {"online_scale_ops": positions * c_in}


# --- online Hadamard --------------------------------------------------------------------------
class OnlineHadamard(nn.Module):
    """x -> x diag(signs) H_n / sqrt(n) along the channel dim (randomized Hadamard, run time)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("signs", torch.ones(n))

    def forward(self, x: Tensor, dim: int) -> Tensor:
        return randomized_hadamard(x, self.signs, dim)

    def matrix(self) -> Tensor:
        """The explicit rotation (rows: input channel, cols: rotated channel)."""
        eye = torch.eye(self.signs.numel(), dtype=torch.float64, device=self.signs.device)
        return randomized_hadamard(eye, self.signs.double(), -1)


class Hadamard(Transform):
    """An online randomized Hadamard over the input channels (QuaRot; per pixel for a conv)."""

    field = "hadamard"
    keys = ("input_hadamard",)

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        host.add_module("input_hadamard", OnlineHadamard(n_in).to(host.weight.device))

    def on_input(self, host: nn.Module, x: Tensor) -> Tensor:
        return host._modules["input_hadamard"](x, host.channel_dim)

    def fold_weight(self, host: nn.Module, w: Tensor) -> Tensor:
        """y = (x H) W^T -> W_eff = W H^T along the input-channel dim."""
        h = host._modules["input_hadamard"].matrix().to(w.device)
        return torch.einsum("oi...,ji->oj...", w, h)

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        positions, c_in = _positions_and_channels(host, args[0])
        return {"online_hadamard_ops": positions * hadamard_ops(c_in)}

    def stored(self, host: nn.Module) -> list[Stored]:
        """The signs, one bit each."""
        return [Stored("input_hadamard.signs", host._modules["input_hadamard"].signs, SIGN_BITS)]


# --- low-rank branch --------------------------------------------------------------------------
class LowRankBranch(nn.Module):
    """up(down(x)): Linear I->r->O, or a kh x kw conv I->r (host's stride/padding) then 1x1 r->O.

    Deliberately not an nn.Linear/nn.Conv2d, so it is never mistaken for a quantization site; its
    weights are 16-bit values (FP16-rounded, computed in FP32 like all simulation).
    """

    def __init__(self, host: nn.Module, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.conv = isinstance(host, nn.Conv2d)
        out_ch = host.weight.shape[0]
        if self.conv:
            if host.groups != 1:
                raise ValueError("a low-rank branch needs an ungrouped conv")
            kh, kw = host.kernel_size
            self.down = nn.Parameter(torch.zeros(rank, host.in_channels, kh, kw))
            self.up = nn.Parameter(torch.zeros(out_ch, rank, 1, 1))
            self.stride, self.padding, self.dilation = host.stride, host.padding, host.dilation
        else:
            self.down = nn.Parameter(torch.zeros(rank, host.in_features))
            self.up = nn.Parameter(torch.zeros(out_ch, rank))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:
            h = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
            return F.conv2d(h, self.up)
        return F.linear(F.linear(x, self.down), self.up)

    def set_factors(self, l1: Tensor, l2: Tensor) -> None:
        """From a split W = L1 [O, r] @ L2 [r, fan_in] + R."""
        with torch.no_grad():
            self.up.copy_(l1.reshape(self.up.shape))
            self.down.copy_(l2.reshape(self.down.shape))

    def matrix(self) -> Tensor:
        """L1 @ L2 as a weight-shaped tensor (conv: [O, I, kh, kw])."""
        w = self.up.reshape(self.up.shape[0], -1) @ self.down.reshape(self.rank, -1)
        return w.reshape(self.up.shape[0], *self.down.shape[1:])


class LowRank(Transform):
    """A 16-bit low-rank branch beside the quantized product (SVDQuant, QuantFace)."""

    field = "lowrank"
    keys = ("lowrank",)

    def spec_value(self, host: nn.Module) -> int:
        return host._modules["lowrank"].rank

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        host.add_module("lowrank", LowRankBranch(host, spec.lowrank).to(host.weight.device))

    def on_output(self, host: nn.Module, y: Tensor, x: Tensor) -> Tensor:
        return y + host._modules["lowrank"](x)

    def fold_weight(self, host: nn.Module, w: Tensor) -> Tensor:
        """W_eff = R + L1 L2 (before the input transforms are folded)."""
        return w + host._modules["lowrank"].matrix().double()

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        """positions x r x (fan_in + O) MACs at 16 bits."""
        c_out = out.shape[host.channel_dim]
        fan_in = host.weight[0].numel()
        rank = host._modules["lowrank"].rank
        return {"lowrank_macs": (out.numel() // c_out) * rank * (fan_in + c_out)}

    def stored(self, host: nn.Module) -> list[Stored]:
        return [
            Stored(f"lowrank.{k}", p, LOWRANK_BITS, parameter=True)
            for k, p in host._modules["lowrank"].named_parameters()
        ]


# --- contraction-dim scale of an attention matmul ---------------------------------------------
class InnerScale(Transform):
    """a diag(s) @ diag(s)^-1 b: the two operands' ranges balanced, the product unchanged."""

    field = "inner"
    keys = ("inner_scale",)

    def spec_value(self, host: nn.Module) -> int:
        return host._buffers["inner_scale"].numel()

    def attach(self, host: nn.Module, spec: InputTransform, n_in: int) -> None:
        dev = host.act_quantizer.scale.device
        host.register_buffer("inner_scale", torch.ones(spec.inner, device=dev))

    def on_operands(self, host: nn.Module, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        s = host._buffers["inner_scale"]
        if s.numel() != a.shape[-1]:
            raise ValueError(
                f"this attention's operand scale was learned for {s.numel()} contraction "
                f"positions, the input has {a.shape[-1]}: run it at the calibration size"
            )
        return a * s, b / s.unsqueeze(-1)

    def run_ops(self, host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
        """One multiply per element of both operands."""
        return {"online_scale_ops": args[0].numel() + args[1].numel()}


SHIFT, SCALE, HADAMARD, LOWRANK, INNER = Shift(), Scale(), Hadamard(), LowRank(), InnerScale()
LAYER_TRANSFORMS: tuple[Transform, ...] = (SHIFT, SCALE, HADAMARD, LOWRANK)  # input order
MATMUL_TRANSFORMS: tuple[Transform, ...] = (INNER,)


def transforms_of(host: nn.Module) -> list[Transform]:
    """The transforms present on a quantized layer or matmul, in input order (none elsewhere)."""
    kinds = getattr(host, "transform_kinds", ())
    return [t for t in kinds if t.present(host)]


def spec_of(host: nn.Module) -> InputTransform:
    """The InputTransform a host's present transforms amount to (what its layout records)."""
    return InputTransform(**{t.field: t.spec_value(host) for t in transforms_of(host)})


def transform_ops(host: nn.Module, args: tuple, out: Tensor) -> dict[str, int]:
    """The summed extra run-time work of a host's transforms for one call, by cost key."""
    ops = dict.fromkeys(EXTRA_KEYS, 0)
    for t in transforms_of(host):
        for k, v in t.run_ops(host, args, out).items():
            ops[k] += v
    return ops


def stored_tensors(host: nn.Module) -> list[Stored]:
    """Everything a host's transforms add to the model."""
    return [s for t in transforms_of(host) for s in t.stored(host)]


# --- geometry of a shifted conv ---------------------------------------------------------------
def _left_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Zeros added before row 0 / column 0 (torch's "same" puts the odd one after)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return tuple(conv.padding)


def border_dependent(mod: nn.Module) -> bool:
    """A zero-padded conv: a constant input shift's output correction varies near the borders."""
    if not isinstance(mod, nn.Conv2d) or mod.padding_mode != "zeros":
        return False
    if mod.padding == "same":
        return any(k > 1 for k in mod.kernel_size)
    return any(p != 0 for p in _left_padding(mod))


def shift_taps(w: Tensor, d: Tensor) -> Tensor:
    """Per-tap sums M[o, a, b] = sum_c W[o, c, a, b] d_c of a conv weight and an input shift."""
    return torch.einsum("ocab,c->oab", w, d)


def _inside(conv: nn.Conv2d, axis: int, n_in: int, n_out: int, like: Tensor) -> Tensor:
    """[k, n_out] 0/1: does tap a of output position i read a real input (not padding)?"""
    k, s, dil = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    out_pos = torch.arange(n_out, device=like.device) * s - _left_padding(conv)[axis]
    pos = out_pos[None, :] + torch.arange(k, device=like.device)[:, None] * dil
    return ((pos >= 0) & (pos < n_in)).to(like.dtype)


def border_shift_map(
    conv: nn.Conv2d, taps: Tensor, in_hw: torch.Size, out_hw: torch.Size
) -> Tensor:
    """conv(d broadcast to an in_hw image, W) with zero padding, from the tap sums: [O, H', W'].

    Separable because the padding mask of tap (a, b) at (i, j) is rows[a, i] * cols[b, j].
    """
    rows = _inside(conv, 0, in_hw[0], out_hw[0], taps)
    cols = _inside(conv, 1, in_hw[1], out_hw[1], taps)
    return torch.einsum("oab,ai,bj->oij", taps, rows, cols)
