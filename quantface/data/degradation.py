"""GFPGAN/CodeFormer synthetic degradation: blur -> downsample -> noise -> JPEG -> resize back.

Ranges are the papers' (GFPGAN v1 training options) and are expressed at 512 px. For
other image sizes the blur sigma and kernel size scale with the image, so a 128-px face is degraded
like a 512-px face seen at a quarter of the resolution; down-scale factors, noise levels (0-255
scale) and JPEG qualities are size-free. Every draw comes from one seeded generator per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DegradationConfig:
    blur_kernel_size: int = 41
    blur_sigma: tuple[float, float] = (0.1, 10.0)
    kernel_prob_iso: float = 0.5
    downsample: tuple[float, float] = (0.8, 8.0)
    noise: tuple[float, float] = (0.0, 20.0)
    jpeg: tuple[float, float] = (60.0, 100.0)
    reference_size: int = 512

    @classmethod
    def from_dict(cls, d: dict) -> DegradationConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Normalised (an)isotropic Gaussian kernel rotated by theta (basicsr's bivariate Gaussian)."""
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    grid = np.stack([xx, yy], -1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", grid, inv, grid))
    return k / k.sum()


def degrade(hq: np.ndarray, rng: np.random.Generator, cfg: DegradationConfig) -> np.ndarray:
    """HxWx3 uint8 HQ -> same-size uint8 LQ."""
    h, w = hq.shape[:2]
    scale = w / cfg.reference_size
    img = hq.astype(np.float32) / 255.0
    # Blur.
    size = max(3, round(cfg.blur_kernel_size * scale) | 1)
    sx = rng.uniform(*cfg.blur_sigma) * scale
    if rng.random() < cfg.kernel_prob_iso:
        sy, theta = sx, 0.0
    else:
        sy, theta = rng.uniform(*cfg.blur_sigma) * scale, rng.uniform(-np.pi, np.pi)
    kernel = gaussian_kernel(size, max(sx, 1e-3), max(sy, 1e-3), theta).astype(np.float32)
    img = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT101)
    # Downsample.
    factor = rng.uniform(*cfg.downsample)
    small = (max(1, int(w / factor)), max(1, int(h / factor)))
    img = cv2.resize(img, small, interpolation=cv2.INTER_LINEAR)
    # Gaussian noise (sigma on the 0-255 scale).
    sigma = rng.uniform(*cfg.noise) / 255.0
    img = img + rng.normal(0.0, 1.0, img.shape).astype(np.float32) * sigma
    img = np.clip(img, 0, 1)
    # JPEG.
    quality = int(rng.uniform(*cfg.jpeg))
    ok, buf = cv2.imencode(
        ".jpg",
        (img * 255).round().astype(np.uint8)[..., ::-1],
        [int(cv2.IMWRITE_JPEG_QUALITY), quality],
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    # Back to the input size.
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
