"""Methods make their exceptions by layer role, answered by the model adapter: on the diffusers
models the roles are the official layers; a model named otherwise moves them with its roles."""

import copy

import pytest
import torch

from quantface.methods.pipeline import quantize_bundle
from quantface.quant.calibration import collect_calibration
from quantface.quant.plan import BitPlan

OFFICIAL = {  # the official layer lists, as the diffusers UNet/VAE name them
    "time_embedding_in": "unet.time_embedding.linear_1",
    "time_embedding_out": "unet.time_embedding.linear_2",
    "unet_in": "unet.conv_in",
    "unet_out": "unet.conv_out",
    "vae_encoder_in": "vae.encoder.conv_in",
    "vae_encoder_out": "vae.encoder.conv_out",
    "vae_decoder_in": "vae.decoder.conv_in",
    "vae_decoder_out": "vae.decoder.conv_out",
    "vae_latent_out": "vae.quant_conv",
    "vae_latent_in": "vae.post_quant_conv",
}


def test_roles_of_the_diffusers_bundle_are_the_official_layers(micro_model):
    roles = micro_model.layer_roles()
    assert roles == {role: (name,) for role, name in OFFICIAL.items()}
    targets = micro_model.quant_targets()
    assert all(name in targets for name in OFFICIAL.values())


@pytest.mark.parametrize(
    "method,role,options",
    [
        ("passionsr", "unet_out", {"let_steps": 0, "lbq_steps": 0, "attn_let": False}),
        ("efficientdm", "unet_in", {"steps": 0}),
    ],
)
def test_a_model_named_otherwise_moves_the_exceptions_with_its_roles(
    method, role, options, micro_model, micro_images, monkeypatch
):
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    elsewhere = "unet.down_blocks.0.resnets.0.conv1"
    roles = {**micro_model.layer_roles(), role: (elsewhere,)}
    monkeypatch.setattr(micro_model, "layer_roles", lambda: roles)
    with torch.no_grad():
        notes = quantize_bundle(method, micro_model, calib, plan, options).notes
    assert elsewhere in notes and OFFICIAL[role] not in notes
