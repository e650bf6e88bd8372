"""Real packed low-bit export of a quantized bundle, and loading it back exactly.

A quantized model saved by `quantize` (model.pt) keeps every weight in FP32 beside its frozen
quantizer, which is what simulation needs but not what a deployment stores. `export_bundle`
writes what a deployment would store, as one safetensors file:

- every quantized Linear/Conv2d weight as its integer codes `q = clamp(round(W/Δ) + z)`
  (offset to unsigned, `q - qmin`), **bit-packed** little-endian at exactly `w_bits` bits per
  value: int8 is one byte per value, int4 two per byte (low nibble first), 3/5/6/7-bit values
  straddle byte boundaries (no padding except at the end of each tensor). A split layer
  (Q-Diffusion) packs each column half with its own quantizer;
- the quantizers' step sizes Δ and zero points z, activation ranges, biases, norms, the FP
  embedder and run-time smoothing/shift vectors in FP32 (as the cost model counts them);
- low-rank branches in FP16 (their values are FP16-rounded by the methods; checked, else FP32);
- online-Hadamard signs (+-1) at one bit each.

Which transform tensor is stored at how many bits is the transform's own declaration
(`transforms.Transform.stored`), the same one the cost model counts.

Tensors of one storage kind are concatenated into one blob (`blob.codes`, `blob.float32`, ...)
and a zlib-compressed JSON index (names, shapes, offsets, bits, plus the model name, config and
quantization layout) is stored as a uint8 tensor. One tensor per parameter would cost ~100 header
bytes each, several percent of a tiny model; with blobs the payload equals the cost model's
`size_bytes` (up to a byte of padding per packed tensor) and the index adds ~10 KB: +0.9 % on the
default tiny model, ~4 % on the tests' 0.2 MB micro model (`quantface export` measures it).

Loading rebuilds the bundle and dequantizes `W_q = (q - z) Δ` with the very expression the fake
quantizer uses, so `W_q` equals `Q_w(W)` bit for bit; `Q_w(W_q) = W_q` (round-to-nearest of an
integer times Δ over Δ is that integer), so the loaded model's outputs are bit-identical to the
simulated model's.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from quantface.errors import CheckpointError
from quantface.io import atomic_path
from quantface.quant.layers import QuantLayerMixin
from quantface.quant.quantizer import UniformQuantizer, from_groups, to_groups
from quantface.quant.specs import LayerQuant
from quantface.quant.target import QuantTarget
from quantface.quant.transforms import LOWRANK_BITS, SIGN_BITS, stored_tensors
from quantface.quant.wrap import wrap_model
from quantface.registry import MODELS

FORMAT = "quantface-packed"
VERSION = 1
_CHUNK = 1 << 20  # values per packing step (a multiple of 8: chunks end on byte boundaries)


# --- bit packing -------------------------------------------------------------------------------
def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Unsigned integer codes (< 2**bits) -> uint8 bytes, `bits` bits per value, LSB first."""
    u = codes.reshape(-1).to(torch.int64).numpy()
    if u.size and (u.min() < 0 or u.max() >= 1 << bits):
        raise ValueError(f"codes outside [0, 2^{bits}) cannot be packed at {bits} bits")
    if bits == 8:
        return torch.from_numpy(u.astype(np.uint8))
    shifts = np.arange(bits, dtype=np.int64)
    parts = [
        np.packbits(((u[s : s + _CHUNK, None] >> shifts) & 1).astype(np.uint8), bitorder="little")
        for s in range(0, u.size, _CHUNK)
    ]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.uint8))


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of `pack_codes`: the first `numel` codes as int64."""
    b = packed.reshape(-1).numpy()
    if bits == 8:
        return torch.from_numpy(b[:numel].astype(np.int64))
    shifts = np.arange(bits, dtype=np.int64)
    step = _CHUNK * bits // 8
    parts = []
    for i, s in enumerate(range(0, b.size, step)):
        n = min(_CHUNK, numel - i * _CHUNK)
        if n <= 0:
            break
        bitmat = np.unpackbits(b[s : s + step], count=n * bits, bitorder="little")
        parts.append((bitmat.reshape(n, bits).astype(np.int64) << shifts).sum(1))
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))


def packed_nbytes(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


# --- weight codes ------------------------------------------------------------------------------
def weight_codes(q: UniformQuantizer, w: Tensor) -> Tensor:
    """The integer grid values (in [qmin, qmax], as float) that `q(w)` dequantizes."""
    s = q.spec
    if s.granularity == "group":
        wg = to_groups(w, s)
        codes = torch.clamp(torch.round(wg / q.scale) + q.zero_point, s.qmin, s.qmax)
        return from_groups(codes, w.shape, s)
    return torch.clamp(torch.round(w / q.scale) + q.zero_point, s.qmin, s.qmax)


def dequantize(codes: Tensor, q: UniformQuantizer) -> Tensor:
    """(q - z) * Δ, the fake quantizer's own final expression (so the result is bit-identical)."""
    if q.spec.granularity == "group":
        cg = to_groups(codes, q.spec)
        return from_groups((cg - q.zero_point) * q.scale, codes.shape, q.spec)
    return (codes - q.zero_point) * q.scale


def weight_parts(mod: QuantLayerMixin) -> list[tuple[str, UniformQuantizer, slice]]:
    """(quantizer attribute, quantizer, input-column slice) of a layer's weight."""
    if not mod.split:
        return [("weight_quantizer", mod.weight_quantizer, slice(None))]
    return [
        ("weight_quantizer", mod.weight_quantizer, slice(0, mod.split)),
        ("weight_quantizer_1", mod.weight_quantizer_1, slice(mod.split, None)),
    ]


# --- export ------------------------------------------------------------------------------------
class _Blobs:
    """Concatenates tensors per storage kind and records where each one went."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}
        self.sizes: dict[str, int] = {}
        self.index: dict[str, dict[str, Any]] = {}

    def add(self, key: str, blob: str, data: Tensor, **info: Any) -> None:
        data = data.reshape(-1).contiguous()
        self.index[key] = {"blob": blob, "offset": self.sizes.get(blob, 0), **info}
        self.parts.setdefault(blob, []).append(data)
        self.sizes[blob] = self.sizes.get(blob, 0) + data.numel()

    def tensors(self) -> dict[str, Tensor]:
        return {f"blob.{k}": torch.cat(v) for k, v in self.parts.items()}


def _encode_codes(blobs: _Blobs, key: str, w: Tensor, mod: QuantLayerMixin) -> None:
    parts = []
    for attr, q, cols in weight_parts(mod):
        codes = weight_codes(q, w[:, cols])
        packed = pack_codes((codes - q.spec.qmin).to(torch.int64), q.spec.bits)
        parts.append({"quantizer": attr, "bits": q.spec.bits, "qmin": q.spec.qmin})
        parts[-1]["shape"] = list(codes.shape)
        blobs.add(f"{key}#{attr}", "codes", packed, **parts[-1])
    blobs.index[key] = {"encoding": "codes", "shape": list(w.shape), "parts": parts}


def _is_signs(t: Tensor) -> bool:
    return bool(((t == 1) | (t == -1)).all())


def export_bundle(
    bundle: QuantTarget,
    layout: dict[str, LayerQuant],
    path: str | Path,
    meta: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write the packed file atomically; returns bytes per storage kind (and the file size)."""
    modules = dict(bundle.named_modules())
    transform_bits = {
        f"{name}.{st.key}": st.bits for name, mod in modules.items() for st in stored_tensors(mod)
    }
    blobs = _Blobs()
    for key, t in bundle.state_dict().items():
        t = t.detach().cpu()
        owner, _, attr = key.rpartition(".")
        mod = modules.get(owner)
        bits = transform_bits.get(key)
        if attr == "weight" and isinstance(mod, QuantLayerMixin) and _calibrated(mod):
            _encode_codes(blobs, key, t, mod)
        elif bits == SIGN_BITS and _is_signs(t):
            blobs.add(key, "codes", pack_codes(t > 0, 1), encoding="signs", shape=list(t.shape))
        elif bits == LOWRANK_BITS and torch.equal(t.half().float(), t):
            blobs.add(key, "float16", t.half(), encoding="raw", shape=list(t.shape))
        else:
            kind = str(t.dtype).removeprefix("torch.")
            blobs.add(key, kind, t, encoding="raw", shape=list(t.shape))
    header = {
        "model": bundle.name,
        "config": bundle.config,
        "layout": {k: v.to_dict() for k, v in layout.items()},
        "meta": meta or {},
        "tensors": blobs.index,
    }
    index = zlib.compress(json.dumps(header).encode(), 9)
    tensors = {**blobs.tensors(), "index": torch.frombuffer(bytearray(index), dtype=torch.uint8)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    sizes["file"] = Path(path).stat().st_size
    return sizes


def _calibrated(mod: QuantLayerMixin) -> bool:
    return all(q.scale.numel() > 0 and not q.spec.dynamic for _, q, _ in weight_parts(mod))


# --- load --------------------------------------------------------------------------------------
def read_packed(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The blobs and the decoded index of a packed file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"packed model file not found: {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            head = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"cannot read packed model {path}: {type(e).__name__}: {e}") from e
    if head.get("format") != FORMAT or head.get("version") != str(VERSION):
        raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} file (written by `export`)")
    index = json.loads(zlib.decompress(tensors.pop("index").numpy().tobytes()))
    return tensors, index


def _slice(tensors: dict[str, Tensor], entry: dict[str, Any], n: int) -> Tensor:
    blob = tensors[f"blob.{entry['blob']}"]
    return blob[entry["offset"] : entry["offset"] + n]


def load_packed(path: str | Path) -> tuple[QuantTarget, dict[str, LayerQuant], dict[str, Any]]:
    """Rebuild the bundle from a packed file; weights are the dequantized codes (exact)."""
    tensors, index = read_packed(path)
    bundle: QuantTarget = MODELS.get(index["model"])(index["config"])
    layout = {k: LayerQuant.from_dict(v) for k, v in index["layout"].items()}
    wrap_model(bundle, layout)
    state: dict[str, Tensor] = {}
    coded = {}
    for key, e in index["tensors"].items():
        if "#" in key:
            continue
        n = int(np.prod(e["shape"], dtype=np.int64))
        if e["encoding"] == "codes":
            coded[key] = e
        elif e["encoding"] == "signs":
            bits = unpack_codes(_slice(tensors, e, packed_nbytes(n, 1)), 1, n)
            state[key] = (bits * 2 - 1).float().reshape(e["shape"])
        else:
            t = _slice(tensors, e, n).reshape(e["shape"])
            state[key] = t.float() if e["blob"] == "float16" else t
    try:
        # zero placeholders for the coded weights: the strict load checks every key first
        zeros = {k: torch.zeros(e["shape"]) for k, e in coded.items()}
        bundle.load_state_dict({**state, **zeros}, strict=True)
        for key, e in coded.items():
            mod = bundle.get_submodule(key.rpartition(".")[0])
            w = torch.empty(e["shape"])
            for (attr, q, cols), part in zip(weight_parts(mod), e["parts"]):
                sub = index["tensors"][f"{key}#{attr}"]
                n = int(np.prod(part["shape"], dtype=np.int64))
                nbytes = packed_nbytes(n, part["bits"])
                raw = unpack_codes(_slice(tensors, sub, nbytes), part["bits"], n)
                codes = (raw + part["qmin"]).float().reshape(part["shape"])
                w[:, cols] = dequantize(codes, q)
            with torch.no_grad():
                mod.weight.copy_(w)
    except (RuntimeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} does not match the '{index['model']}' architecture: {e}")
    bundle.eval()
    return bundle, layout, index["meta"]
