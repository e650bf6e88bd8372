"""The full-size study's pieces, checked cheaply: config, random-weight model, memory fixes, timing.

The full-size run itself is `snakemake --configfile config/scale.yaml` (minutes to hours on a CPU);
here only what can be checked in seconds: shapes on the meta device, determinism of the seeded
initialisation on small modules, and that each memory fix leaves the tiny-model numbers unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from quantface.config import load_config, merge_configs, validate_config
from quantface.methods.allocation import fill_unmeasured
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.models.random_osdface import RandomOSDFace, random_init
from quantface.models.sd21 import SD21_UNET, SD21_VAE
from quantface.subsample import spaced_subset
from quantface.timing import LINE, log_timing

ROOT = Path(__file__).resolve().parents[1]


def test_scale_config_validates_over_the_embedded_default():
    """Snakemake merges --configfile over config/config.yaml; both ways must be valid."""
    scale = load_config(ROOT / "config" / "scale.yaml")
    merged = merge_configs([load_config(ROOT / "config" / "config.yaml"), scale])
    validate_config(merged)
    assert merged["model"]["name"] == "osdface_random"
    assert merged["data"]["image_size"] == 512
    assert set(merged["bits"]) == {"w4a4", "mp4"}


def test_random_osdface_has_the_sd21_shapes_on_meta():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD21_UNET)
        vae = AutoencoderKL.from_config(SD21_VAE)
    model = RandomOSDFace(modules={"unet": unet, "vae": vae})
    count = {p: sum(t.numel() for t in getattr(model, p).parameters()) for p in ("unet", "vae")}
    assert count == {"unet": 865_910_724, "vae": 83_653_863}
    assert sum(t.numel() for t in model.embedder.parameters()) == 29_566_912
    assert model.config["unet"] == SD21_UNET and model.image_size == 512


def test_random_osdface_refuses_assets():
    from quantface.errors import ConfigError

    with pytest.raises(ConfigError, match="reads no files"):
        RandomOSDFace.check_assets({"sd21_base": "x"})


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.GroupNorm(8, 64), nn.Linear(64, 256))


def test_random_init_is_seeded_and_fan_in_scaled():
    a, b, c = _small(), _small(), _small()
    random_init(a, 3)
    random_init(b, 3)
    random_init(c, 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["0.weight"], sc["0.weight"])
    assert float(sa["2.weight"].std()) == pytest.approx(64**-0.5, rel=0.05)
    assert float(sa["0.weight"].std()) == pytest.approx(27**-0.5, rel=0.1)
    assert torch.equal(sa["1.weight"], torch.ones(64)) and not sa["2.bias"].any()


def test_load_bundle_assigns_mapped_tensors_and_restores_the_same(tmp_path, micro_model):
    """The model file is memory-mapped and assigned, not copied; the output is bit-identical."""
    path = tmp_path / "model.pt"
    save_bundle(micro_model, path)
    back, _, _ = load_bundle(path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back.restore(x), micro_model.restore(x))
    for (k, v), (_, w) in zip(micro_model.state_dict().items(), back.state_dict().items()):
        assert v.dtype == w.dtype and torch.equal(v, w), k
    with torch.no_grad():  # copy-on-write: editing the loaded weights leaves the file as it was
        next(back.parameters()).add_(1.0)
    again, _, _ = load_bundle(path)
    assert torch.equal(next(again.parameters()), next(micro_model.parameters()))


def test_sensitivity_subset_and_fill():
    sites = [f"s{i}" for i in range(10)]
    assert spaced_subset(sites, None) is None and spaced_subset(sites, 10) is None
    assert spaced_subset(sites, 3) == ["s0", "s3", "s6"]
    measured = {"s0": {4: 1.0, 6: 0.0}, "s3": {4: 3.0, 6: 2.0}}
    full = fill_unmeasured(measured, ["s0", "s1", "s3"])
    assert full == {"s0": {4: 1.0, 6: 0.0}, "s1": {4: 2.0, 6: 1.0}, "s3": {4: 3.0, 6: 2.0}}
    assert list(fill_unmeasured(measured, ["s3", "s0"])) == ["s3", "s0"]  # all measured: as is


def test_timing_line_round_trips(caplog):
    with caplog.at_level(logging.INFO, logger="quantface.timing"):
        log_timing("distill step", 3, 1.5)
    m = LINE.search(caplog.records[-1].getMessage())
    assert m and m["stage"] == "distill_step" and int(m["n"]) == 3 and float(m["s"]) == 1.5


def test_block_checkpointing_leaves_the_distillation_unchanged(micro_model, monkeypatch):
    """Recomputing blocks in the backward (full-size distillation) gives the same steps."""
    import copy

    from quantface.quant import distill as d

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = d.fp_targets(micro_model, x, 2) * 0.9

    def run(threshold: int):
        monkeypatch.setattr(d, "CHECKPOINT_ABOVE_PX", threshold)
        model = copy.deepcopy(micro_model).requires_grad_(False)
        params = [model.unet.conv_in.weight, model.vae.decoder.conv_in.weight]
        for p in params:
            p.requires_grad_(True)
        curve = d.distill(model, x, targets, [{"params": params}], d.DistillConfig(3, 1e-2, 2))
        assert not model.unet.is_gradient_checkpointing  # switched off again afterwards
        return curve, [p.detach().clone() for p in params]

    (c0, p0), (c1, p1) = run(128), run(0)
    assert c0 == c1 and all(torch.equal(a, b) for a, b in zip(p0, p1))


def _paper_cost_row(tmp_path, monkeypatch, capsys, method, stages, restore_s=None):
    """paper_cost's table row for `method` from a fake measured run: one quantize job (100 s
    wall) whose log has `stages` ((stage, n, seconds) timing lines, then quantize_total 90 s),
    and optionally a restore_evaluate job of `restore_s` per image over both test sets."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_cost

    res = tmp_path / "results"
    job = res / "benchmarks" / "quantize" / "osdface_random" / method / "w4a4.tsv"
    job.parent.mkdir(parents=True)
    job.write_text("s\th:m:s\tmax_rss\tcpu_time\n100\t0:01:40\t2048\t100\n")
    timing = "x INFO quantface.timing: timing stage={} n={} seconds={} rss_gib=1"
    lines = ["x INFO quantface: device: cpu"]
    lines += [timing.format(*st) for st in [*stages, ("quantize_total", 1, 90.0)]]
    log = res / "logs" / "quantize" / "osdface_random" / method / "w4a4.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(lines))
    if restore_s is not None:  # one restore_evaluate job for both test sets: a line per set
        r = res / "logs" / "restore_evaluate" / "osdface_random" / method / "w4a4.log"
        r.parent.mkdir(parents=True, exist_ok=True)
        r.write_text((timing.format("restore_image", 1, restore_s) + "\n") * 2)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["paper_cost.py", "--results", str(res)])
    paper_cost.main()
    out = capsys.readouterr().out
    return next(r for r in out.splitlines() if r.startswith(f"| {method}")), out


def test_paper_cost_bills_measured_loops_and_never_labels_cpu_as_gpu(tmp_path, monkeypatch, capsys):
    """A fake measured run: one efficientdm quantize job (a 1-step loop) and its restorations."""
    row, out = _paper_cost_row(
        tmp_path, monkeypatch, capsys, "efficientdm", [("distill_step", 1, 10.0)], 2.0
    )
    # 90 s fixed + 16,000 steps x batch 4/1 x 10 s; restore 2 s x 6,088 images; 3 cells
    quant_h, restore_h = (100 - 10 + 16000 * 4 * 10.0) / 3600, 2.0 * 6088 / 3600
    assert f"| {quant_h:.1f} | {restore_h:.1f} | {3 * (quant_h + restore_h):.1f} |" in row
    assert row.endswith("| not measured | not measured |") and "measured on: cpu" in out


def test_paper_cost_scales_svdquant_search_and_refit(tmp_path, monkeypatch, capsys):
    """SVDQuant's smoothing search is billed per (layer, candidate) and its refit per (layer,
    iterate), from the scale run's 3 candidates / 2 iterates to the paper's 39 / 100."""
    stages = [("smooth_candidate", 30, 3.0), ("lowrank_iter", 20, 4.0)]
    row, _ = _paper_cost_row(tmp_path, monkeypatch, capsys, "svdquant", stages)
    quant_h = (100 - 7 + 0.1 * 30 * 39 / 3 + 0.2 * 20 * 100 / 2) / 3600
    assert f"| {quant_h:.2f}" in row or f"| {quant_h:.1f} |" in row, row


def test_paper_cost_bills_qdiffusion_for_every_unit_from_a_spaced_subset(
    tmp_path, monkeypatch, capsys
):
    """3 of 120 units measured (`max_units`): each loop is billed for all 120 units, at the
    paper's 20k/5k iterations x batch 4/1 and 64/2 calibration images; the input is captured
    twice per unit (weight and activation stage), so its measured count carries that factor."""
    stages = [("find_blocks", 120, 1.0), ("units_reconstructed", 3, 0.0)]
    stages += [("capture_output", 6, 6.0), ("capture_input", 12, 12.0)]
    stages += [("adaround_iter", 3, 3.0), ("lsq_iter", 3, 6.0)]
    row, _ = _paper_cost_row(tmp_path, monkeypatch, capsys, "qdiffusion", stages)
    fixed = 100 - (6 + 12 + 3 + 6)
    capture = 1.0 * 120 * 64 * (1 + 2)  # 1 s per image, every unit, output once + input twice
    iters = 120 * 4 * (1.0 * 20000 + 2.0 * 5000)  # per unit, batch 4 over the measured batch 1
    assert f"| {(fixed + capture + iters) / 3600:.1f} |" in row, row
