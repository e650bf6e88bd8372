"""FID(HQ) and FID(FFHQ) of the paper's tables, with one declared feature convention.

Convention (pinned; FID values from different conventions are not comparable):
pyiqa's `fid` in `clean` mode — the same code path OSDFace's evaluation (pyiqa) takes. Each image
is resized per channel to 299x299 with PIL bicubic on float data (clean-fid), scaled by
(x - 128) / 128 and fed to the TF-ported Inception-v3 of pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`, pool3, 2048-D). FID = ||mu1 - mu2||^2 +
Tr(S1 + S2 - 2 (S1 S2)^1/2).

- `fid_hq`: restored folder vs the test set's own HQ folder (the paper's "FID (CelebA)",
  OSDFace's "FID(HQ)"); the HQ statistics are cached beside the HQ folder (keyed by the file list
  and the weights), so the 30-odd evaluation jobs of one dataset compute them once.
- `fid_ffhq`: restored folder vs precomputed FFHQ statistics from a local `.npz` with keys
  `mu` and `sigma` — by default pyiqa's clean-fid `ffhq_clean_trainval70k_512.npz` (FFHQ 70k at
  512 px, same Inception and resize); the file name used is written in the note column.

Both need at least 2 images (a covariance) and are biased upward for small sets (407-3000
images here); the number of images is in every row.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from quantface.io import atomic_path, list_images
from quantface.metrics.iqa import Metric, use_weights_dir
from quantface.registry import METRICS

log = logging.getLogger(__name__)

INCEPTION_FILE = "hub/pyiqa/pt_inception-2015-12-05-6726825d.pth"
FFHQ_STATS_FILE = "hub/pyiqa/ffhq_clean_trainval70k_512.npz"
BLOCK_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}


def frechet_distance(feats: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID of a feature set against (mu2, sigma2), without a d x d matrix square root.

    With A = (X - mu1) / sqrt(n - 1) (n x d), S1 = A^T A, and the non-zero eigenvalues of S1 S2
    are those of the symmetric n x n matrix A S2 A^T, so Tr (S1 S2)^1/2 = sum sqrt(eig(A S2 A^T)).
    Exact (no iteration, unlike scipy's sqrtm), and O(n^2 d) for n <= d: seconds instead of a
    minute for 2048-D features on a CPU. For n > d the d x d form S1^1/2 S2 S1^1/2 is used.
    """
    x = np.asarray(feats, np.float64)
    n = len(x)
    mu1 = x.mean(axis=0)
    a = (x - mu1) / np.sqrt(n - 1)
    s2 = np.asarray(sigma2, np.float64)
    if n <= x.shape[1]:
        eig = np.linalg.eigvalsh(a @ s2 @ a.T)
    else:
        w, v = np.linalg.eigh(a.T @ a)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        eig = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - np.asarray(mu2, np.float64)
    return float(diff @ diff + (a * a).sum() + np.trace(s2) - 2 * trace_sqrt)


class PooledInceptionV3(torch.nn.Module):
    """pyiqa's FID Inception, globally average-pooled at any block (pool3 already is), so a
    smaller `dims` gives a smaller vector instead of pyiqa's flattened sFID map. The class name
    contains "Inception" so pyiqa's feature loop applies its Inception input scaling."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, resize_input: bool = False, normalize_input: bool = False):
        feats = self.net(x, resize_input, normalize_input)
        return [torch.nn.functional.adaptive_avg_pool2d(f, 1) for f in feats]


@dataclass
class FIDMetric(Metric):
    """A set-level metric: `score_set(pred_dir, ref_dir)` instead of per-image `score`."""

    set_level: bool = True
    dims: int = 2048
    stats_file: str = ""  # relative to weights_dir; empty: against the reference folder

    def build(self, weights_dir: Path, device: str | torch.device = "cpu") -> str:
        from pyiqa.archs import inception

        use_weights_dir(weights_dir)
        path = weights_dir / INCEPTION_FILE
        self._weights = path
        with mock.patch.object(inception, "FID_WEIGHTS_URL", str(path)):  # local file, no URL
            net = inception.InceptionV3(output_blocks=[BLOCK_BY_DIM[self.dims]])
        self._device = torch.device(device)
        self._model = PooledInceptionV3(net).eval().to(self._device)
        ref = f"stats {Path(self.stats_file).name}" if self.stats_file else "the HQ folder"
        return f"FID: pyiqa clean mode, pytorch-fid Inception pool ({self.dims}-D) vs {ref}"

    def features(self, folder: Path, batch_size: int = 8) -> np.ndarray:
        from pyiqa.archs.fid_arch import get_folder_features

        return get_folder_features(
            str(folder),
            self._model,
            num_workers=0,
            batch_size=batch_size,
            device=self._device,
            mode="clean",
            verbose=False,
        )

    def reference_stats(self, ref: Path | None, weights_dir: Path, batch_size: int):
        if self.stats_file:
            data = np.load(weights_dir / self.stats_file)
            return data["mu"], data["sigma"]
        names = "\n".join(p.name for p in list_images(ref))
        key = hashlib.sha1(f"{names}|{self.dims}|{self._weights.stat().st_size}".encode())
        cache = ref.parent / f".fid_stats_{ref.name}_{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            data = np.load(cache)
            return data["mu"], data["sigma"]
        ref_feats = self.features(ref, batch_size)
        mu, sigma = ref_feats.mean(axis=0), np.cov(ref_feats, rowvar=False)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
        return mu, sigma

    def score_set(
        self, pred: Path, ref: Path | None, weights_dir: Path, batch_size: int = 8
    ) -> float:
        feats = self.features(pred, batch_size)
        if len(feats) < 2:
            return float("nan")
        ref_mu, ref_sigma = self.reference_stats(ref, weights_dir, batch_size)
        return frechet_distance(feats, ref_mu, ref_sigma)


METRICS.register("fid_hq")(
    FIDMetric(
        "fid_hq",
        "fid",
        "fr",
        False,
        (INCEPTION_FILE,),
        doc="FID(HQ): restored vs the test set's HQ images (pyiqa clean Inception); local weights",
        label="FID (HQ)",
        decimals=4,
        unit="",
    )
)
METRICS.register("fid_ffhq")(
    FIDMetric(
        "fid_ffhq",
        "fid",
        "nr",
        False,
        (INCEPTION_FILE, FFHQ_STATS_FILE),
        doc="FID(FFHQ): restored vs precomputed FFHQ statistics (.npz mu/sigma); local files",
        label="FID (FFHQ)",
        decimals=4,
        unit="",
        stats_file=FFHQ_STATS_FILE,
    )
)
