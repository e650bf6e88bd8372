"""Dataset registry: each entry writes `lq/` (and `hq/` when paired) plus `manifest.json`.

`prepare(out_dir, options, seed)` is deterministic: the same options and seed give the same
bytes. Every sample has its own seed derived from (dataset seed, index), so adding images to a
set never changes the existing ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from skimage import data as skdata

from quantface.data.align import crop_face
from quantface.data.degradation import DegradationConfig, degrade
from quantface.data.synthetic_faces import generate_face
from quantface.errors import DataError
from quantface.io import atomic_dir, list_images, read_image, write_image
from quantface.registry import DATASETS

MANIFEST = "manifest.json"


class Dataset(Protocol):
    """`prepare` writes the set; `device` is where a model may run on the way (folder sets align
    faces with MTCNN there; the generated sets are numpy on the CPU and ignore it)."""

    paired: bool

    def prepare(
        self, out_dir: Path, options: dict[str, Any], seed: int, device: str = "cpu"
    ) -> dict[str, Any]: ...


def sample_seed(seed: int, index: int) -> list[int]:
    """Seed sequence of one sample: independent streams per (dataset seed, index)."""
    return [int(seed), int(index)]


def _write_set(
    out_dir: Path, pairs: list[tuple[str, np.ndarray, np.ndarray | None]], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write all images and the manifest into a temp folder, then move it into place at once."""
    with atomic_dir(out_dir) as tmp:
        for name, lq, hq in pairs:
            write_image(tmp / "lq" / name, lq)
            if hq is not None:
                write_image(tmp / "hq" / name, hq)
        manifest = {**manifest, "n_images": len(pairs), "files": [p[0] for p in pairs]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


@DATASETS.register("synthetic_faces")
@dataclass
class SyntheticFaces:
    """Generated HQ faces degraded by the GFPGAN/CodeFormer pipeline (paired; synthetic like CelebA-Test)."""

    paired: bool = True

    @staticmethod
    def pairs(
        n: int, size: int, deg: DegradationConfig, seed: int
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(file name, LQ, HQ) of the first `n` faces, in memory (what `prepare` writes)."""
        out = []
        for i in range(n):
            ss = sample_seed(seed, i)
            hq = generate_face(int(np.random.SeedSequence(ss).generate_state(1)[0]), size)
            out.append((f"{i:05d}.png", degrade(hq, np.random.default_rng(ss), deg), hq))
        return out

    def prepare(
        self, out_dir: Path, options: dict[str, Any], seed: int, device: str = "cpu"
    ) -> dict[str, Any]:
        n, size = int(options["n_images"]), int(options["image_size"])
        deg = DegradationConfig.from_dict(options.get("degradation", {}))
        return _write_set(
            out_dir,
            self.pairs(n, size, deg, seed),
            {
                "dataset": "synthetic_faces",
                "paired": True,
                "image_size": size,
                "seed": seed,
                "degradation": deg.__dict__,
            },
        )


@DATASETS.register("realworld_embedded")
@dataclass
class RealWorldEmbedded:
    """Real low-quality face photos shipped inside scikit-image (LFW subset + astronaut), no ground truth."""

    paired: bool = False

    def prepare(
        self, out_dir: Path, options: dict[str, Any], seed: int, device: str = "cpu"
    ) -> dict[str, Any]:
        n, size = int(options["n_images"]), int(options["image_size"])
        faces = skdata.lfw_subset()[:100]  # the first 100 are faces, 25x25 grayscale in [0, 1]
        order = np.random.default_rng(seed).permutation(len(faces))
        pairs = []
        astronaut = crop_face(skdata.astronaut(), size)
        pairs.append(("astronaut.png", astronaut, None))
        for k in order[: max(0, n - 1)]:
            gray = (faces[k] * 255).round().astype(np.uint8)
            img = cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC)
            pairs.append((f"lfw_{k:03d}.png", np.repeat(img[..., None], 3, axis=2), None))
        return _write_set(
            out_dir,
            pairs,
            {
                "dataset": "realworld_embedded",
                "paired": False,
                "image_size": size,
                "seed": seed,
                "source": "scikit-image data: lfw_subset() faces (25x25, upscaled bicubic) and "
                "astronaut() (face detected with the LBP cascade and cropped)",
            },
        )


def load_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(
            f"dataset folder {folder} has no {MANIFEST}; prepare it with `quantface prepare-data`"
        )
    return json.loads(path.read_text())


def check_dataset(folder: str | Path) -> dict[str, Any]:
    """Every image the manifest lists is present and readable, and nothing is missing."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    sub = ["lq", "hq"] if manifest["paired"] else ["lq"]
    for s in sub:
        names = [p.name for p in list_images(folder / s)]
        if sorted(names) != sorted(manifest["files"]):  # the manifest keeps generation order
            missing = sorted(set(manifest["files"]) - set(names))
            extra = sorted(set(names) - set(manifest["files"]))
            raise DataError(
                f"{folder / s}: files differ from {MANIFEST} (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for name in names:
            read_image(folder / s / name)
    return manifest
