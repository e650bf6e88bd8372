"""The paper's test sets as user-provided folders with expected counts.

| name            | images | pairs | source (none can be downloaded here)                         |
|-----------------|--------|-------|--------------------------------------------------------------|
| `celeba_test`   | 3000   | LQ/HQ | CelebA-Test, synthetic (DAEFR / VQFR release)                |
| `lfw_test`      | 1711   | LQ    | LFW-Test, real-world (GFPGAN / VQFR release)                 |
| `webphoto_test` | 407    | LQ    | WebPhoto-Test, real-world (GFPGAN / VQFR release)            |
| `wider_test`    | 970    | LQ    | WIDER-Test, real-world (CodeFormer / VQFR release)           |

Config per dataset: `lq` (folder), `hq` (folder; needed for `celeba_test`), `n_images` (expected
count; defaults to the paper's, set it only for a deliberately reduced set), `synthesize_lq`
(make the LQ images from `hq` with the package's GFPGAN/CodeFormer degradation, seeded per image
by (dataset seed, index), for users who only have the HQ images), `align` (detect 5 landmarks and
warp every photo onto the FFHQ template at `data.image_size`, for unaligned photos; a paired
LQ image is warped with its HQ image's landmarks so the pair stays registered).

`check_source` runs when the config is validated, before any job: it counts the files, pairs
LQ/HQ by file stem and reads every image header, so a wrong path, a missing or extra file or an
unreadable image stops the run with one line naming it. `prepare` then decodes every image
(writing PNG copies under `results/data/<name>/`), so a file that is truncated after its header
still fails in the first job and never mid-study. Without `align`, square images of another size
are resized to `data.image_size` (area down, bicubic up; counted in the manifest) and non-square
ones are rejected with the file named: squashing them would distort the faces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from quantface.data.align import align_face, detect_landmarks5
from quantface.data.datasets import _write_set, sample_seed
from quantface.data.degradation import DegradationConfig, degrade
from quantface.errors import DataError
from quantface.io import IMAGE_SUFFIXES, check_square, read_image, to_tensor, to_uint8
from quantface.registry import DATASETS
from quantface.restore import fit_to_model

log = logging.getLogger(__name__)


def _images(folder: Path, label: str, name: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{name}: {label} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DataError(f"{name}: two images with the stem '{p.stem}' in {folder}")
        by_stem[p.stem] = p
    return by_stem


def _fit(
    arr: np.ndarray | None, size: int, path: Path | None, resized: list[str]
) -> np.ndarray | None:
    """A square image at `size` px (area down, bicubic up, as restore does); non-square: DataError."""
    if arr is None:
        return None
    check_square(arr, path)
    if arr.shape[0] == size:
        return arr
    resized.append(str(path))
    return to_uint8(fit_to_model(to_tensor(arr), size))


def _header(path: Path) -> None:
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - parses the header only
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


@dataclass
class FolderDataset:
    """Base: a test set read from folders the user provides."""

    name: str = ""
    expected: int = 0
    paired: bool = False
    source: str = ""

    def files(self, options: dict[str, Any]) -> list[tuple[str, Path | None, Path | None]]:
        """(stem, lq path or None when synthesized, hq path or None), checked against the count."""
        synth = bool(options.get("synthesize_lq"))
        need_hq = self.paired or synth
        for key in ("hq",) if synth else ("lq", "hq") if need_hq else ("lq",):
            if not options.get(key):
                raise DataError(
                    f"{self.name}: set data.datasets.{self.name}.{key} to the folder of "
                    f"{key.upper()} images ({self.source})"
                )
        expected = int(options.get("n_images", self.expected))
        hq = _images(Path(options["hq"]), "HQ", self.name) if need_hq else {}
        lq = {} if synth else _images(Path(options["lq"]), "LQ", self.name)
        main, folder = (hq, options["hq"]) if synth else (lq, options["lq"])
        if len(main) != expected:
            raise DataError(
                f"{self.name}: expected {expected} images in {folder}, found {len(main)}"
                + ("" if "n_images" in options else f" (the paper's {self.name} has {expected})")
            )
        if need_hq and not synth:
            missing = sorted(set(lq) - set(hq))
            extra = sorted(set(hq) - set(lq))
            if missing or extra:
                raise DataError(
                    f"{self.name}: LQ and HQ folders differ: HQ lacks {missing[:3]}, "
                    f"LQ lacks {extra[:3]} (pairs are matched by file stem)"
                )
        return [(s, lq.get(s), hq.get(s)) for s in sorted(main)]

    def check_source(self, options: dict[str, Any]) -> int:
        """Counts, pairing and every image header; returns the number of images."""
        rows = self.files(options)
        for _, lq, hq in rows:
            for p in (lq, hq):
                if p is not None:
                    _header(p)
        return len(rows)

    def prepare(
        self, out_dir: Path, options: dict[str, Any], seed: int, device: str = "cpu"
    ) -> dict[str, Any]:
        """Decode (align on `device`, or resize), degrade if asked, and write the set."""
        rows = self.files(options)
        size = int(options["image_size"])
        deg = DegradationConfig.from_dict(options.get("degradation", {}))
        align, synth = bool(options.get("align")), bool(options.get("synthesize_lq"))
        pairs, resized = [], []
        for i, (stem, lq_path, hq_path) in enumerate(rows):
            hq = read_image(hq_path) if hq_path is not None else None
            lq = read_image(lq_path) if lq_path is not None else None
            if align:
                try:
                    ref = hq if hq is not None else lq
                    points = detect_landmarks5(ref, device)
                except DataError as e:
                    raise DataError(f"{self.name}: {hq_path or lq_path}: {e}") from e
                hq = align_face(hq, size, points)[0] if hq is not None else None
                lq = align_face(lq, size, points)[0] if lq is not None else None
            else:  # square crops of another size are resized, anything else is rejected
                hq = _fit(hq, size, hq_path, resized)
                lq = _fit(lq, size, lq_path, resized)
            if synth:
                lq = degrade(hq, np.random.default_rng(sample_seed(seed, i)), deg)
            keep_hq = hq if self.paired or synth else None
            pairs.append((f"{stem}.png", lq, keep_hq))
        if resized:
            log.warning(
                "%s: resized %d images to %d px, e.g. %s", self.name, len(resized), size, resized[0]
            )
        return _write_set(
            out_dir,
            pairs,
            {
                "dataset": self.name,
                "paired": self.paired,
                "image_size": size,
                "seed": seed,
                "source": {k: options.get(k) for k in ("lq", "hq")},
                "synthesize_lq": synth,
                "aligned_here": align,
                "resized_to_image_size": len(resized),
                "degradation": deg.__dict__ if synth else None,
            },
        )


def folder_dataset(name: str, expected: int, paired: bool, source: str, doc: str) -> type:
    """A `FolderDataset` subclass for one published test set (its size, pairing and source)."""
    return type(
        name,
        (FolderDataset,),
        {
            "__doc__": doc,
            "__init__": lambda self: FolderDataset.__init__(self, name, expected, paired, source),
        },
    )


DATASETS.register("celeba_test")(
    folder_dataset(
        "celeba_test",
        3000,
        True,
        "CelebA-Test LQ/HQ pairs: https://github.com/LIAGM/DAEFR (README, test data)",
        doc="CelebA-Test: 3000 synthetic LQ/HQ pairs from user folders (Table 1)",
    )
)
DATASETS.register("lfw_test")(
    folder_dataset(
        "lfw_test",
        1711,
        False,
        "LFW-Test: https://github.com/TencentARC/VQFR or GFPGAN (README, test data)",
        doc="LFW-Test: 1711 real-world LQ faces from a user folder (Table 3)",
    )
)
DATASETS.register("webphoto_test")(
    folder_dataset(
        "webphoto_test",
        407,
        False,
        "WebPhoto-Test: https://github.com/TencentARC/VQFR or GFPGAN (README, test data)",
        doc="WebPhoto-Test: 407 real-world LQ faces from a user folder (Table 3)",
    )
)
DATASETS.register("wider_test")(
    folder_dataset(
        "wider_test",
        970,
        False,
        "WIDER-Test: https://github.com/sczhou/CodeFormer or LIAGM/DAEFR (README, test data)",
        doc="WIDER-Test: 970 real-world LQ faces from a user folder (Table 3)",
    )
)
