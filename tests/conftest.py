"""Shared fixtures: tiny models built from config, isolated caches, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from quantface.allocator import keep_freed_memory

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"

# Smallest architecture that still has every kind of site (convs, linears, self- and
# cross-attention in UNet and VAE); a forward pass takes milliseconds.
MICRO_ARCH = {
    "image_size": 32,
    "pretrained_vae": False,
    "vae_channels": [8, 8],
    "vae_layers_per_block": 0,
    "vae_norm_groups": 1,
    "vae_attention": True,
    "unet_norm_groups": 8,
    "latent_channels": 4,
    "unet_channels": [16, 32],
    "unet_attention": [False, True],
    "context_dim": 16,
    "attention_head_dim": 8,
    "embed_tokens_side": 2,
}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Micro models are many tiny ops: thread hand-offs cost more than they save on 2 cores.
    The allocator thresholds every CLI command sets (quantface/allocator.py) hold here too."""
    keep_freed_memory()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so an outcome cannot depend on
    which tests ran before it in its xdist worker (a default nn.Linear init reads it)."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("MPLCONFIGDIR", str(cache / "mpl"))


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory) -> Path:
    """One full run of the micro study (`--cores 2`), shared by the end-to-end tests that read it:
    the DAG takes a minute and every job is a fresh process, so running it once saves minutes."""
    from tests.test_workflow import snakemake

    workdir = tmp_path_factory.mktemp("micro_study")
    cache = tmp_path_factory.getbasetemp() / "cache"
    with pytest.MonkeyPatch.context() as mp:  # the same isolated caches as every other test
        for var, sub in [("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MPLCONFIGDIR", "mpl")]:
            mp.setenv(var, str(cache / sub))
        r = snakemake(workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


@pytest.fixture
def micro_model():
    from quantface.models.tiny import TinyRestorer

    torch.manual_seed(0)
    model = TinyRestorer(MICRO_ARCH).eval()
    # The noise head is zero-initialised for training; give it weights so the UNet matters.
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    return model


@pytest.fixture
def micro_images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=g)


def pytest_collection_modifyitems(items):
    """The end-to-end runs first: with two workers (pyproject's `-n auto`), a minutes-long run
    scheduled last would leave one core idle while it finishes alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
