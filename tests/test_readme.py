"""The README's "Add your own ..." examples, run as written: each registers and works."""

from __future__ import annotations

import copy
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantface.registry import Registry

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Add your own model, method, metric or dataset"


def _snippet(registry: str) -> str:
    """The section's Python block that registers with `registry`."""
    section = README.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return next(b for b in blocks if f"{registry}.register(" in b)


@pytest.fixture
def registries(monkeypatch) -> dict[str, Registry]:
    """Fresh registries in place of the package's, so the examples' names do not leak. Every
    module that registers is imported first: one imported while the fresh registries are in
    place would register there, and the package's registries would never hold its entries."""
    import importlib

    from quantface import registry

    for var in ("METHODS", "METRICS", "DATASETS"):
        for entry in getattr(registry, var).index().values():
            importlib.import_module(entry.module)
    fresh = {
        "METHODS": Registry("method", "METHODS", ("quantface.methods", "baselines")),
        "METRICS": Registry("metric", "METRICS", ("quantface.metrics",)),
        "DATASETS": Registry("dataset", "DATASETS", ("quantface.data",)),
    }
    for var, reg in fresh.items():
        monkeypatch.setattr(f"quantface.registry.{var}", reg)
    return fresh


def _run(registry: str, folder: Path) -> None:
    """Run the example as its own file would be run."""
    path = folder / f"readme_{registry.lower()}.py"
    path.write_text(_snippet(registry), encoding="utf-8")
    runpy.run_path(str(path))


def test_the_method_example_quantizes_through_the_api(
    registries, micro_model, micro_images, tmp_path
):
    from quantface.api import quantize
    from quantface.quant.calibration import collect_calibration

    _run("METHODS", tmp_path)
    assert registries["METHODS"].get("my_rtn").label == "My RTN"
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    result = quantize(micro_model, "my_rtn", "w4a4", calib)
    with torch.no_grad():
        out = result.model.restore(micro_images)
        fp = micro_model.restore(micro_images)
    assert torch.isfinite(out).all() and not torch.equal(out, fp)  # quantized, still an image
    assert result.cost["total"]["param_bits_reduction"] > 0.5


def test_the_metric_example_scores_each_image(registries, tmp_path):
    _run("METRICS", tmp_path)
    metric = registries["METRICS"].get("mae")
    assert metric.mode == "fr" and not metric.higher_is_better
    assert metric.build(tmp_path) == "MAE of RGB values in [0, 1]"
    pred, ref = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.25)
    assert metric.score(pred, ref).tolist() == [0.25, 0.25]


def test_the_dataset_example_reads_a_folder_of_photos(registries, tmp_path):
    _run("DATASETS", tmp_path)
    lq = tmp_path / "lq"
    lq.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(lq / f"{name}.png")
    dataset = registries["DATASETS"].get("my_faces")()
    assert dataset.check_source({"lq": str(lq)}) == 2
    manifest = dataset.prepare(tmp_path / "out", {"lq": str(lq), "image_size": 32}, seed=0)
    assert manifest["n_images"] == 2 and (tmp_path / "out" / "lq" / "a.png").is_file()
