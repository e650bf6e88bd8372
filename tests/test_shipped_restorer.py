"""The shipped trained restorer: used only for its own recipe, verified, reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from quantface.config import job_seed, load_config, model_options
from quantface.errors import CheckpointError
from quantface.models import shipped
from quantface.models.tiny import PRETRAINED_VAE
from quantface.models.train import train_restorer
from tests.conftest import MICRO_ARCH

FEW_STEPS = {
    "vae_steps": 2,
    "latent_steps": 2,
    "pixel_steps": 1,
    "pool_size": 4,
    "batch_size": 2,
    "crop": 16,
}


def _recipe(train=FEW_STEPS, seed=5):
    return shipped.training_recipe("tiny", MICRO_ARCH, dict(train), {}, seed)


@pytest.fixture
def micro_shipped(tmp_path, monkeypatch):
    """A shipped file made from a few-step micro recipe, installed in place of the real one."""
    model = train_restorer("tiny", MICRO_ARCH, FEW_STEPS, {}, 5)
    path = tmp_path / "tiny_restorer.safetensors"
    shipped.save_shipped(model, _recipe(), path, threads=1, vae_file=PRETRAINED_VAE)
    monkeypatch.setattr(shipped, "SHIPPED_RESTORER", path)
    return model, path


def _no_training(*args, **kwargs):
    raise AssertionError("trained although the shipped file matches the recipe")


def test_default_run_uses_the_shipped_file():
    """The embedded default's prepare_model job asks for exactly the shipped recipe, so a fresh
    clone does not train; the file is fp32 and under 10 MB."""
    config = load_config("config/config.yaml")
    opts = model_options(config)
    recipe = shipped.training_recipe(
        "tiny",
        opts["arch"],
        opts["train"],
        opts["degradation"],
        job_seed(config["seed"], "model", "tiny"),
    )
    assert shipped.matching_shipped(recipe) == shipped.SHIPPED_RESTORER
    assert shipped.SHIPPED_RESTORER.stat().st_size < 10 * 2**20
    meta = shipped.shipped_metadata()
    assert meta["vae_sha256"]  # the frozen pretrained VAE is recorded, not stored


def test_recipe_is_deterministic_over_a_few_steps():
    """Same recipe, same tensors: what makes shipping one trained file honest."""
    a = train_restorer("tiny", MICRO_ARCH, FEW_STEPS, {}, 5)
    b = train_restorer("tiny", MICRO_ARCH, FEW_STEPS, {}, 5)
    parts = shipped.trained_parts(_recipe())
    assert shipped.tensors_sha256(shipped.trained_state(a, parts)) == shipped.tensors_sha256(
        shipped.trained_state(b, parts)
    )
    c = train_restorer("tiny", MICRO_ARCH, FEW_STEPS, {}, 6)
    assert shipped.tensors_sha256(shipped.trained_state(c, parts)) != shipped.tensors_sha256(
        shipped.trained_state(a, parts)
    )


def test_matching_recipe_loads_the_trained_weights(micro_shipped, monkeypatch):
    trained, _ = micro_shipped
    monkeypatch.setattr("quantface.models.train.train_restorer", _no_training)
    # spelling a default out is not a change of recipe
    loaded = shipped.fp_restorer("tiny", MICRO_ARCH, {**FEW_STEPS, "lr": 2.0e-3}, {}, 5)
    ref = trained.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training


@pytest.mark.parametrize(
    "change",
    [
        {"train": {**FEW_STEPS, "from_scratch": True}},
        {"train": {**FEW_STEPS, "latent_steps": 3}},
        {"seed": 6},
        {"degradation": {"noise": [0.0, 5.0]}},
    ],
    ids=["from_scratch", "train_key", "seed", "degradation"],
)
def test_any_other_recipe_trains(micro_shipped, monkeypatch, change):
    calls = []

    def fake_train(*args, **kwargs):
        calls.append(args)
        return "trained"

    monkeypatch.setattr("quantface.models.train.train_restorer", fake_train)
    args = {"train": FEW_STEPS, "degradation": {}, "seed": 5, **change}
    out = shipped.fp_restorer("tiny", MICRO_ARCH, args["train"], args["degradation"], args["seed"])
    assert out == "trained" and len(calls) == 1


def test_a_damaged_file_is_refused(micro_shipped, tmp_path):
    _, path = micro_shipped
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a weight byte, past the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        shipped.fp_restorer("tiny", MICRO_ARCH, FEW_STEPS, {}, 5)


def test_recipe_is_recorded_in_the_file(micro_shipped):
    _, path = micro_shipped
    meta = shipped.shipped_metadata(path)
    assert json.loads(meta["recipe"]) == _recipe()
    assert meta["torch"] == torch.__version__ and meta["threads"] == "1"
    assert "vae_sha256" not in meta  # MICRO_ARCH trains its VAE: stored, not referenced
