"""Running the restore path from a kept intermediate (quantface/models/staged.py) gives bitwise
the full restoration, skips what the site cannot change, and runs whole a bundle that restores
otherwise."""

from __future__ import annotations

import torch

from quantface.models.staged import StagedRestore, section


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


@torch.no_grad()
def test_every_section_restores_bitwise_what_the_full_pass_does(micro_model, micro_images):
    batches = list(micro_images.split(2))
    full = [micro_model.restore(b) for b in batches]
    stages = StagedRestore(micro_model, batches)
    for site in (
        "vae.encoder.conv_in",
        "unet.conv_in",
        "vae.post_quant_conv",
        "vae.decoder.conv_in",
    ):
        for i, expected in enumerate(full):
            assert torch.equal(stages.run(site, i), expected), site


@torch.no_grad()
def test_a_decoder_site_runs_neither_encoder_nor_unet_again(micro_model, micro_images):
    stages = StagedRestore(micro_model, [micro_images])
    stages.restored()
    encoder, unet = _count_calls(micro_model.vae.encoder), _count_calls(micro_model.unet)
    stages.run("vae.decoder.conv_in", 0)
    assert encoder == [0] and unet == [0]
    stages.run("unet.conv_in", 0)
    assert encoder == [0] and unet == [1]
    assert section("vae.encoder.conv_in") == "input"


@torch.no_grad()
def test_a_bundle_with_its_own_restore_is_run_whole(micro_model, micro_images):
    class Shifted(type(micro_model)):
        def restore(self, lq, clamp=True):
            return super().restore(lq, clamp) * 0.5

    micro_model.__class__ = Shifted
    stages = StagedRestore(micro_model, [micro_images])
    assert torch.equal(stages.run("vae.decoder.conv_in", 0), micro_model.restore(micro_images))
