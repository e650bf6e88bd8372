"""Learned step sizes and output distillation from the FP model."""

from __future__ import annotations

import copy

import pytest
import torch

from quantface.errors import NumericsError
from quantface.quant.apply import calibrate_weights, set_activation_ranges
from quantface.quant.calibration import collect_calibration
from quantface.quant.distill import DistillConfig, distill, fp_targets
from quantface.quant.learnable import clamp_scales_, learnable_scales
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.quant.wrap import wrap_model


def _w4a4(micro_model, micro_images):
    model = copy.deepcopy(micro_model)
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    wrap_model(
        model,
        QuantScheme().layout(
            model, model.quant_targets(), BitPlan.uniform(model.quant_targets(), 4, 4)
        ),
    )
    calibrate_weights(model)
    set_activation_ranges(model, calib)
    return model


def test_learnable_scales_train_and_return_as_buffers(micro_model, micro_images):
    model = _w4a4(micro_model, micro_images)
    keys = set(model.state_dict())
    targets = fp_targets(micro_model, micro_images, 4)
    cfg = DistillConfig(steps=12, lr=1e-3, batch_size=4)

    def full_loss():
        with torch.no_grad():
            return (model.restore(micro_images, clamp=False) - targets).pow(2).mean().item()

    start = full_loss()
    with learnable_scales(model, "all") as params:
        assert params and all(p.requires_grad for p in params)
        before = [p.detach().clone() for p in params]
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        curve = distill(
            model, micro_images, targets, [{"params": params}], cfg, lambda: clamp_scales_(params)
        )
        assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert len(curve) == 12
    assert full_loss() < start
    assert set(model.state_dict()) == keys  # same checkpoint format as before training
    assert not any(n.endswith("scale") for n, _ in model.named_parameters())
    assert all(b.min() > 0 for n, b in model.named_buffers() if n.endswith(".scale"))


def test_a_diverging_distillation_stops_with_a_clear_error(micro_model, micro_images):
    model = _w4a4(micro_model, micro_images)
    targets = torch.full_like(fp_targets(micro_model, micro_images, 4), float("nan"))
    with pytest.raises(NumericsError, match="diverged at step 0"):
        distill(
            model,
            micro_images,
            targets,
            [{"params": [next(model.parameters())]}],
            DistillConfig(steps=2),
        )
