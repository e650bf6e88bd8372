"""Paper-style figures from small hand-made inputs: they render, and their logic is right."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from quantface.metrics_format import COLUMNS
from quantface.quant.plan import BitPlan, LayerBits
from quantface.report.figures import (
    activation_distribution,
    bit_width_map,
    pareto_front,
    pick_outlier_layers,
    quality_vs_cost,
    write_figures,
)


def test_pareto_front_keeps_only_non_dominated_points():
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.0])
    quality = np.array([10.0, 9.0, 12.0, 11.0, 11.5])
    # higher is better: (1,10) -> (2,11.5) -> (3,12); (2,9) and (4,11) are dominated
    assert pareto_front(cost, quality, True).tolist() == [0, 4, 2]
    # lower is better: only the cheapest point with the lowest value so far
    assert pareto_front(cost, quality, False).tolist() == [0, 1]


def _metrics_and_cost():
    rows, cost = [], []
    cells = [("fp", "fp32", 32, 30.0), ("a", "w8a8", 8, 29.0), ("a", "w4a4", 4, 22.0)]
    cells += [("b", "w8a8", 8, 28.0), ("b", "w4a4", 4, 25.0)]
    for method, bits, b, psnr in cells:
        for metric, value, hib in (("psnr", psnr, True), ("niqe", 40 - psnr, False)):
            rows.append(
                {
                    "model": "tiny",
                    "method": method,
                    "bits": bits,
                    "w_bits": b,
                    "a_bits": b,
                    "dataset": "syn",
                    "metric": metric,
                    "value": value,
                    "higher_is_better": hib,
                    "n_images": 2,
                    "seed": 0,
                    "note": "",
                }
            )
        cost.append(
            {
                "model": "tiny",
                "method": method,
                "bits": bits,
                "size_bytes": 1e6 * b / 32,
                "bops": 1e9 * b * b,
                "calibration_seconds": 1.0,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(cost)


def _stats(n_layers=5, channels=16, seed=0):
    g = np.random.default_rng(seed)
    stats = {}
    for i in range(n_layers):
        hi = g.uniform(0.5, 1.0, channels)
        hi[i] = 10.0 * (i + 1)  # layer i has one outlier channel, growing with i
        stats[f"unet.layer{i}.input"] = {"ch_min": -hi / 2, "ch_max": hi}
    stats["unet.attn.a"] = {"ch_min": -np.ones(channels), "ch_max": 100 * np.ones(channels)}
    return stats


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
        return np.asarray(im.convert("L"))


def test_quality_vs_cost_plots_every_metric(tmp_path):
    df, cost = _metrics_and_cost()
    path = quality_vs_cost(df, cost, "syn", tmp_path)
    assert path.name == "quality_vs_cost_syn.png"
    assert _png(path).std() > 0  # not a blank image
    assert quality_vs_cost(df[df["method"] == "fp"], cost, "syn", tmp_path) is None


def test_outlier_layers_are_picked_from_linear_and_conv_inputs():
    stats = _stats()
    assert pick_outlier_layers(stats, k=2) == ["unet.layer4.input", "unet.layer3.input"]


def test_activation_distribution_before_and_after(tmp_path):
    before = _stats()
    after = {
        k: {"ch_min": v["ch_min"] / 4, "ch_max": np.minimum(v["ch_max"], 1.0)}
        for k, v in before.items()
    }
    one = _png(activation_distribution(before, tmp_path / "a"))
    two = _png(activation_distribution(before, tmp_path / "b", after=after))
    assert two.shape[0] > one.shape[0] * 1.5  # a second row of panels


def test_bit_width_map_of_a_hand_written_mixed_plan(tmp_path):
    plan = {
        "layers": {f"unet.l{i}": {"w_bits": 4, "a_bits": [3, 4, 5, 6][i % 4]} for i in range(12)},
        "notes": {},
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    mp = BitPlan.load(tmp_path / "plan.json")
    uniform = BitPlan.uniform([f"unet.l{i}" for i in range(10)], 4, 4)  # two layers kept FP
    path = bit_width_map({"quantface_mp_mp4": mp, "maxmin_w4a4": uniform}, tmp_path)
    assert path.name == "bit_width_map.png" and _png(path).std() > 0
    with pytest.raises(ValueError):
        bit_width_map({}, tmp_path)


def test_bit_width_map_labels_the_budgeted_average_beside_the_layer_mean():
    from quantface.report.figures import _mean_label

    notes = {"allocation": json.dumps({"average_act_bits": 3.9997})}
    plan = BitPlan({n: LayerBits(4, b) for n, b in (("a", 3), ("b", 5))}, notes)
    row = np.array([3, 5, 32])
    label = _mean_label("mp", row, plan, "activation")
    assert label == "mp (layer mean 4.00, element-weighted 4.00)"
    assert _mean_label("mp", row, plan, "weight") == "mp (layer mean 4.00)"
    assert _mean_label("fp", np.array([32, 32]), plan, "activation") == "fp"


def test_write_figures_merges_inputs_and_reads_plans(tmp_path):
    df, cost = _metrics_and_cost()
    df.iloc[:4].to_csv(tmp_path / "m1.csv", index=False)
    df.iloc[4:].to_csv(tmp_path / "m2.csv", index=False)
    cost.to_csv(tmp_path / "cost.csv", index=False)
    plan = BitPlan.uniform(["x", "y"], 4, 6)
    plan.save(tmp_path / "plan.json")
    made = write_figures(
        [tmp_path / "m1.csv", tmp_path / "m2.csv"],
        tmp_path / "fig",
        cost=[tmp_path / "cost.csv"],
        plans={"p": tmp_path / "plan.json"},
    )
    assert sorted(p.name for p in made) == [
        "bit_width_map.png",
        "quality_vs_bits_syn.png",
        "quality_vs_cost_syn.png",
    ]


def _outside(inner, outer, tol: float = 1.0) -> bool:
    return (
        inner.x0 < outer.x0 - tol
        or inner.y0 < outer.y0 - tol
        or inner.x1 > outer.x1 + tol
        or inner.y1 > outer.y1 + tol
    )


@pytest.fixture
def drawn(monkeypatch):
    """Each figure by name, measured as drawn just before it is saved: its figure, the box of
    everything drawn and, per annotation, its box and its panel's (in inches)."""
    from quantface.report import figures

    kept = {}
    save = figures._save

    def keep(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inches = fig.dpi_scale_trans.inverted()
        notes = [
            (t.get_text(), t.get_window_extent(renderer).transformed(inches), ax_box)
            for ax in fig.axes
            for ax_box in [ax.get_window_extent(renderer).transformed(inches)]
            for t in ax.texts
        ]
        kept[path.name] = fig, fig.get_tightbbox(renderer).frozen(), notes
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def test_no_text_is_clipped_and_axes_carry_units_and_paper_names(tmp_path, drawn):
    from quantface.report.figures import quality_vs_bits

    df, cost = _metrics_and_cost()
    names = {"a": "maxmin", "b": "qdiffusion"}
    df["method"], cost["method"] = df["method"].replace(names), cost["method"].replace(names)
    quality_vs_bits(df, "syn", tmp_path)
    quality_vs_cost(df, cost, "syn", tmp_path)
    # four layers whose names differ only in the middle, as a real UNet's do
    site = "unet.down_blocks.{}.attentions.0.transformer_blocks.0.ff.net.2.input"
    before = {site.format(i): _stats(4)[f"unet.layer{i}.input"] for i in range(4)}
    activation_distribution(before, tmp_path, after=before)
    bit_width_map({"QuantFace-MP MP4": BitPlan.uniform(["x", "y"], 4, 6)}, tmp_path)
    assert len(drawn) == 4
    for name, (fig, drawn_box, notes) in drawn.items():
        # everything drawn (titles, labels, ticks, legend) lies on the canvas
        assert not _outside(drawn_box, fig.bbox_inches, 0.01), name
        for text, box, panel in notes:  # a point's bits label stays inside its panel
            assert not _outside(box, panel, 0.01), (name, text)
    for name in ("quality_vs_bits_syn.png", "quality_vs_cost_syn.png"):
        fig = drawn[name][0]
        axes = [ax for ax in fig.axes if ax.axison]
        for ax in axes:
            assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), (name, ax.get_title())
        psnr = [ax.get_ylabel() for ax in axes if ax.get_title().startswith("PSNR")]
        assert psnr and all(label == "PSNR (dB)" for label in psnr), name
        legend = {t.get_text() for t in fig.legends[0].get_texts()}
        assert {"MaxMin", "Q-Diffusion"} <= legend, name
    xlabels = {ax.get_xlabel() for ax in drawn["quality_vs_cost_syn.png"][0].axes if ax.axison}
    assert xlabels == {"model size (MiB)", "GBOPs (10⁹ bit operations)"}
    # panel titles name each layer in full (a cut name left two panels with the same title)
    titles = [
        ax.get_title().replace("\n", "") for ax in drawn["activation_distribution.png"][0].axes
    ]
    for layer in before:
        assert sum(t.startswith(layer.removesuffix(".input")) for t in titles) == 2, layer
