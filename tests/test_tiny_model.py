import json

import pytest
import torch

from quantface.cli import main
from quantface.errors import ConfigError, WeightsMissingError
from quantface.models.tiny import PRETRAINED_VAE, TinyRestorer
from tests.conftest import MICRO_ARCH


def test_one_step_restoration_shapes_and_range(micro_model, micro_images):
    with torch.no_grad():
        out = micro_model.restore(micro_images)
    assert out.shape == micro_images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert micro_model.timestep == 399
    assert micro_model._ab == pytest.approx(0.4261, abs=1e-3)  # SD-2.1 alpha_bar(399)


def test_pretrain_vae_round_trip_and_mismatch(tmp_path):
    out = tmp_path / "vae.safetensors"
    arch = {**MICRO_ARCH, "pretrained_vae": True}
    assert (
        main(
            [
                "pretrain-vae",
                "--out",
                str(out),
                "--steps",
                "2",
                "--options",
                json.dumps({"arch": arch}),
            ]
        )
        == 0
    )
    model = TinyRestorer(arch)
    model.load_pretrained_vae(out)
    other = TinyRestorer({**arch, "latent_channels": 8})
    with pytest.raises(ConfigError, match="pretrained_vae: false"):
        other.load_pretrained_vae(out)
    with pytest.raises(WeightsMissingError, match="pretrain-vae"):
        model.load_pretrained_vae(tmp_path / "absent.safetensors")


def test_shipped_vae_matches_the_default_architecture():
    assert PRETRAINED_VAE.is_file(), "the package ships its pretrained tiny VAE"
    TinyRestorer().load_pretrained_vae()


def test_unet_attention_levels_follow_the_arch_and_a_wrong_length_is_named():
    arch = {**MICRO_ARCH, "unet_channels": [8, 16, 16], "unet_attention": [False, False, True]}
    unet = TinyRestorer(arch).unet
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "DownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert type(unet.up_blocks[0]).__name__ == "CrossAttnUpBlock2D"
    default = TinyRestorer({**MICRO_ARCH, "unet_attention": None}).unet  # all but the first
    assert [type(b).__name__ for b in default.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    with pytest.raises(ConfigError, match="unet_attention has 1 entries for 2"):
        TinyRestorer({**MICRO_ARCH, "unet_attention": [True]})


def test_eps_skip_starts_training_from_the_lq_latent_and_off_is_plain_ddpm(micro_images):
    """With `eps_skip` (the default) the zero-initialised noise head returns the LQ latent
    itself, so the restorer starts as decode(encode(lq)); without it the same zero eps gives
    OSDFace's plain x0 estimate z / sqrt(a_t), 1.53 z at t = 399."""
    torch.manual_seed(0)
    skip, plain = TinyRestorer(MICRO_ARCH).eval(), TinyRestorer({**MICRO_ARCH, "eps_skip": False})
    plain.load_state_dict(skip.state_dict())
    with torch.no_grad():
        z = skip.encode(micro_images)
        torch.testing.assert_close(skip.restore_latent(micro_images), z)
        torch.testing.assert_close(plain.eval().restore_latent(micro_images), z / skip._ab**0.5)
