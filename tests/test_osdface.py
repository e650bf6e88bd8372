"""The `osdface` adapter on a tiny stand-in written in OSDFace's file layout (no downloads).

The reference each check compares against is built independently of the adapter: the LoRA is
applied *unmerged* through forward hooks on the original UNet, and the VRE token selection is
OSDFace's per-image loop written out in plain Python.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from quantface.errors import CheckpointError, WeightsMissingError
from quantface.models.base import alpha_bar
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.models.osdface import OSDFaceRestorer
from quantface.models.vre import OSDFaceVRE
from tests.paper_assets import (
    IMAGE_SIZE,
    LORA_ALPHA,
    LORA_RANK,
    LORA_TARGETS,
    TINY_ARCH,
    TINY_VRE,
    lora_pairs,
    write_osdface_assets,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_osdface_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def bundle(assets):
    return OSDFaceRestorer.from_assets({k: str(v) for k, v in assets.items()}, TINY_ARCH)


@pytest.fixture
def lq():
    return torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))


def osdface_selection(z: torch.Tensor, book: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """OSDFace's `VectorQuantizer.inference` for ONE image, as a plain loop (the reference)."""
    flat = z.flatten(1).t()  # (N, C)
    d = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
    dmin, code = d.min(dim=1)
    seen, picked = set(), []
    for i in torch.sort(dmin, stable=True).indices.tolist():
        c = int(code[i])
        if c not in seen:
            seen.add(c)
            picked.append(c)
        if len(picked) == n_tokens:
            break
    out = torch.zeros(n_tokens, book.shape[1])
    out[: len(picked)] = book[picked]
    return out


def reference_restore(assets, lq: torch.Tensor) -> torch.Tensor:
    """OSDFace's forward with un-merged LoRA hooks, built from the files directly."""
    unet = UNet2DConditionModel.from_pretrained(str(assets["sd21_base"]), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(assets["sd21_base"]), subfolder="vae")
    scale = LORA_ALPHA / LORA_RANK
    for name, (a, b) in lora_pairs(unet).items():
        mod = unet.get_submodule(name)

        def hook(m, inp, out, a=a, b=b):
            x = inp[0]
            if a.ndim == 4:
                h = F.conv2d(x, a, stride=m.stride, padding=m.padding)
                return out + scale * F.conv2d(h, b)
            return out + scale * (x @ a.t() @ b.t())

        mod.register_forward_hook(hook)
    vre = OSDFaceVRE(TINY_VRE)
    ckpt = torch.load(assets["osdface"] / "associate_2.ckpt", weights_only=True)["state_dict"]
    vre.vqvae.load_state_dict(
        {k[9:]: v for k, v in ckpt.items() if k.startswith("vqvae_LQ.") and ".decoder." not in k}
    )
    vre.embedding_change.load_state_dict(
        torch.load(assets["osdface"] / "embedding_change_weights.pth", weights_only=True)
    )
    with torch.no_grad():
        x = lq * 2 - 1
        v = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        h = vre.vqvae.quant_conv(vre.vqvae.encoder((v - 0.5) / 0.5))
        book = vre.vqvae.quantize.embedding.weight
        tokens = torch.stack([osdface_selection(h[i], book, 77) for i in range(len(lq))])
        ctx = vre.embedding_change(tokens)
        dist = vae.encode(x).latent_dist
        g = [torch.Generator().manual_seed(114) for _ in range(len(lq))]
        noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=gi) for gi in g])
        z = (dist.mean + dist.std * noise) * 0.18215
        eps = unet(z, 399, encoder_hidden_states=ctx).sample
        ab = alpha_bar(399)
        x0 = (z.double() - math.sqrt(1 - ab) * eps.double()) / math.sqrt(ab)
        return (vae.decode(x0.float() / 0.18215).sample.clamp(-1, 1) + 1) / 2


def test_context_is_77_tokens_of_the_unet_width(bundle, lq):
    with torch.no_grad():
        ctx = bundle.condition(lq)
    assert ctx.shape == (3, 77, 32)


def test_adapter_matches_osdface_forward_with_unmerged_lora(assets, bundle, lq):
    with torch.no_grad():
        out = bundle.restore(lq)
    ref = reference_restore(assets, lq)
    assert out.shape == lq.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_lora_changes_every_target_and_nothing_else(assets, bundle):
    base = UNet2DConditionModel.from_pretrained(str(assets["sd21_base"]), subfolder="unet")
    merged = dict(bundle.unet.named_parameters())
    changed = {
        n.removesuffix(".weight")
        for n, p in base.named_parameters()
        if not torch.equal(p, merged[n])
    }
    assert changed == set(LORA_TARGETS)


def test_batch_of_three_equals_three_single_images(bundle, lq):
    with torch.no_grad():
        together = bundle.restore(lq)
        alone = torch.cat([bundle.restore(lq[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_token_selection_matches_osdface_loop_for_each_image():
    torch.manual_seed(0)
    vre = OSDFaceVRE({**TINY_VRE, "n_embed": 24})  # fewer codes than tokens: zero rows appear
    z = torch.randn(4, 16, 16, 16)
    got = vre.vqvae.quantize(z)
    book = vre.vqvae.quantize.embedding.weight
    for i in range(4):
        torch.testing.assert_close(got[i], osdface_selection(z[i], book, 77))
    assert (got[0].abs().sum(1) == 0).sum() >= 77 - 24


def test_only_unet_and_vae_are_quantization_targets(bundle):
    sites = bundle.quant_targets()
    assert sites and all(s.startswith(("unet.", "vae.")) for s in sites)
    assert any(s.startswith("vae.") for s in sites)


def test_saved_bundle_reloads_without_the_original_files(bundle, lq, tmp_path):
    save_bundle(bundle, tmp_path / "model.pt", meta={"method": "fp"})
    again, layout, _ = load_bundle(tmp_path / "model.pt")
    assert layout == {} and again.name == "osdface"
    with torch.no_grad():
        torch.testing.assert_close(again.restore(lq), bundle.restore(lq), atol=0, rtol=0)


def test_mode_sampling_is_deterministic_and_differs_from_sample(assets, lq):
    paths = {k: str(v) for k, v in assets.items()}
    m = OSDFaceRestorer.from_assets(paths, {**TINY_ARCH, "latent_sampling": "mode"})
    with torch.no_grad():
        z1, z2 = m.encode(lq), m.encode(lq)
    assert torch.equal(z1, z2)


@pytest.mark.parametrize(
    "remove,named",
    [
        ("OSDFace/pretrained/pytorch_lora_weights.safetensors", "pytorch_lora_weights"),
        ("OSDFace/pretrained/associate_2.ckpt", "associate_2.ckpt"),
        ("OSDFace/pretrained/embedding_change_weights.pth", "embedding_change_weights.pth"),
        (
            "stable-diffusion-2-1-base/unet/diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model",
        ),
    ],
)
def test_missing_file_is_one_line_naming_it_and_its_source(tmp_path, remove, named):
    assets = write_osdface_assets(tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(WeightsMissingError) as err:
        OSDFaceRestorer.from_assets({k: str(v) for k, v in assets.items()}, TINY_ARCH)
    msg = str(err.value)
    assert named in msg and "\n" not in msg
    assert "OSDFace" in msg or "stable-diffusion-2-1-base" in msg


def test_lora_of_the_wrong_rank_is_refused(assets):
    paths = {k: str(v) for k, v in assets.items()}
    with pytest.raises(CheckpointError, match="rank 4"):
        OSDFaceRestorer.from_assets(paths, {**TINY_ARCH, "lora_rank": 16})


def test_the_export_form_of_token_selection_is_the_same_selection(monkeypatch):
    """Under ONNX export the selection runs as TopK and a dense first-rank min (no stable sort
    or scatter-min the exporter lacks); it picks the same tokens, zero rows included."""
    torch.manual_seed(1)
    for n_embed in (24, 512):
        vre = OSDFaceVRE({**TINY_VRE, "n_embed": n_embed})
        z = torch.randn(3, 16, 16, 16)
        eager = vre.vqvae.quantize(z)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        exported = vre.vqvae.quantize(z)
        monkeypatch.undo()
        assert torch.equal(exported, eager), n_embed
