"""Identity metrics of the paper's Table 1: Deg. (identity angle) and LMD (landmark distance).

**Deg.**: the angle, in degrees, between face-recognition embeddings of the restored face and
its HQ face, `arccos(cos(e_out, e_hq)) * 180 / pi` (VQFR's `calculate_cos_dist.py` convention;
QuantFace/OSDFace report about 60, i.e. degrees). The paper used an ArcFace network whose weights
cannot be had offline. The recogniser is therefore pluggable:
  - ArcFace IR-SE50 (facexlib's `recognition_arcface_ir_se50.pth`, architecture shipped in
    facexlib) when that file is in `weights_dir/facexlib/`: the aligned 512 face is resized to
    112x112, RGB normalised to [-1, 1], as facexlib feeds it;
  - otherwise dlib's ResNet face descriptor (128-D, weights inside the `face-recognition-models`
    package), computed on dlib's own 5-point face chip.
  Values from the two recognisers are not comparable; the note column says which one ran.

**LMD**: mean Euclidean distance between 68 dlib landmarks of the restored face and of the HQ
face, in pixels of a 512x512 face (scaled when images are smaller). VQFR/OSDFace used a 98-point
FAN detector; 68-point dlib is the offline substitute, so absolute values differ.

The test sets are FFHQ-aligned, so one face box serves a pair: dlib's HOG detector runs on the HQ
image (falling back to the box HOG finds on typical FFHQ-aligned faces) and the same box is
used for the restored image, so a badly restored face still gets scored instead of skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from quantface.metrics.iqa import Metric
from quantface.registry import METRICS

DLIB_FILES = {
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "shape68": "shape_predictor_68_face_landmarks.dat",
}
ARCFACE_FILE = "facexlib/recognition_arcface_ir_se50.pth"
FFHQ_BOX_512 = (95, 164, 405, 439)  # median dlib HOG box on 25 FFHQ-aligned 512-px faces


def dlib_models_dir() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models"


def _uint8(x: Tensor) -> list[np.ndarray]:
    return [
        np.ascontiguousarray(i.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
        for i in x
    ]


class DlibFaces:
    """dlib detector, 5/68-point shape predictors and the ResNet descriptor."""

    def __init__(self) -> None:
        import dlib

        folder = dlib_models_dir()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape5 = dlib.shape_predictor(str(folder / DLIB_FILES["shape5"]))
        self.shape68 = dlib.shape_predictor(str(folder / DLIB_FILES["shape68"]))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / DLIB_FILES["recognizer"]))

    def box(self, hq: np.ndarray):
        found = self.detector(hq, 0)
        if len(found):
            return max(found, key=lambda r: r.area())
        s = hq.shape[1] / 512
        return self.dlib.rectangle(*(round(v * s) for v in FFHQ_BOX_512))

    def landmarks68(self, img: np.ndarray, box) -> np.ndarray:
        shape = self.shape68(img, box)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def embed(self, img: np.ndarray, box) -> np.ndarray:
        shape = self.shape5(img, box)
        return np.asarray(self.recognizer.compute_face_descriptor(img, shape), dtype=np.float64)


class ArcFaceIRSE50:
    """facexlib's ArcFace IR-SE50 from a local file on a chosen device (facexlib's own loader
    forces CUDA). dlib, the fallback recogniser and the landmark detector, runs on the CPU only."""

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        from facexlib.recognition.arcface_arch import Backbone

        self.device = torch.device(device)
        self.net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.to(self.device)

    @torch.no_grad()
    def embed(self, img: np.ndarray, box=None) -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(self.device) / 255
        x = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear", antialias=True)
        return self.net(x * 2 - 1)[0].double().cpu().numpy()


@functools.lru_cache(maxsize=1)
def dlib_faces() -> DlibFaces:
    """One loaded set of dlib models per process (the 68-point predictor alone is 100 MB)."""
    return DlibFaces()


def angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


@dataclass
class _DlibMetric(Metric):
    """Shared: dlib models present in the installed package are this metric's 'weights'."""

    def missing_weights(self, weights_dir: Path) -> list[str]:
        if importlib.util.find_spec("dlib") is None:
            return ["dlib (pip install dlib-bin)"]
        folder = dlib_models_dir()
        if folder is None:
            return ["face_recognition_models (pip install face-recognition-models)"]
        return [
            f"face_recognition_models/models/{f}"
            for f in DLIB_FILES.values()
            if not (folder / f).is_file()
        ]


@dataclass
class DegMetric(_DlibMetric):
    def build(self, weights_dir: Path, device: str | torch.device = "cpu") -> str:
        self._faces = dlib_faces()
        arcface = weights_dir / ARCFACE_FILE
        if arcface.is_file():
            self._model = ArcFaceIRSE50(arcface, device)
            return "Deg: ArcFace IR-SE50 (facexlib), degrees"
        self._model = self._faces
        return "Deg: dlib ResNet descriptor (not the paper's ArcFace), degrees"

    @torch.no_grad()
    def score(self, pred: Tensor, ref: Tensor | None = None) -> Tensor:
        out = []
        for p, h in zip(_uint8(pred), _uint8(ref)):
            box = self._faces.box(h)
            out.append(angle_degrees(self._model.embed(p, box), self._model.embed(h, box)))
        return torch.tensor(out, dtype=torch.float64)


@dataclass
class LMDMetric(_DlibMetric):
    def build(self, weights_dir: Path, device: str | torch.device = "cpu") -> str:
        """dlib computes on the CPU whatever `device` says (it has no torch model)."""
        self._model = dlib_faces()
        return "LMD: dlib 68 landmarks, px at 512x512 (paper: 98-point FAN)"

    @torch.no_grad()
    def score(self, pred: Tensor, ref: Tensor | None = None) -> Tensor:
        out = []
        for p, h in zip(_uint8(pred), _uint8(ref)):
            box = self._model.box(h)
            d = self._model.landmarks68(p, box) - self._model.landmarks68(h, box)
            out.append(float(np.linalg.norm(d, axis=1).mean()) * 512 / h.shape[1])
        return torch.tensor(out, dtype=torch.float64)


METRICS.register("deg")(
    DegMetric(
        "deg",
        "deg",
        "fr",
        False,
        doc="Deg.: identity angle (degrees) to HQ; dlib offline, ArcFace when its file is local",
        label="Deg.",
        decimals=4,
        unit="degrees",
        min_size=64,
    )
)
METRICS.register("lmd")(
    LMDMetric(
        "lmd",
        "lmd",
        "fr",
        False,
        doc="LMD: mean 68-landmark distance to HQ (px at 512, dlib)",
        label="LMD",
        decimals=4,
        unit="px at 512x512",
        min_size=64,
    )
)
