"""The Python API: the four steps the CLI and the workflow run, callable from a notebook.

    from quantface.api import calibrate, evaluate, quantize, restore, restore_photos

    calib = calibrate("results/tiny/fp/model.pt", n_images=32)
    result = quantize("results/tiny/fp/model.pt", "maxmin", "w4a4", calib)
    result.save("out/maxmin_w4a4")                      # model.pt, plan.json, cost.json
    restore("out/maxmin_w4a4/model.pt", "my/faces", "restored")
    restore_photos("out/maxmin_w4a4/model.pt", "my/photos", "restored_photos")  # --whole
    evaluate("restored", ["niqe", "piqe"], out="restored_metrics.csv")

`quantface calibrate`, `quantize`, `restore` and `evaluate` are thin wrappers over these
functions (argument parsing, logging, exit codes and the output files), so a notebook gets what
the CLI and the workflow get for the same arguments. (The
functions live here, not in the package root: `quantface.restore` and `quantface.evaluate` are
the modules that do the work.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantface.errors import NumericsError, QuantFaceError
from quantface.memory import enter_stage
from quantface.timing import log_timing

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from quantface.methods.pipeline import QuantizeResult
    from quantface.models.base import RestorerBundle
    from quantface.quant.calibration import CalibrationSet
    from quantface.quant.scheme import QuantScheme

log = logging.getLogger(__name__)
CALIBRATION_FACES_SEED = 7_777  # calibration faces: disjoint from training and test faces


def _fp_model(model: str | Path | RestorerBundle, device: str, what: str) -> RestorerBundle:
    """A loaded FP bundle (from a file, or as given), refusing an already quantized one."""
    from quantface.device import as_device
    from quantface.models.checkpoint import load_bundle

    if not isinstance(model, str | Path):
        return model
    bundle, layout, _ = load_bundle(model, device=as_device(device))
    if layout:
        raise QuantFaceError(f"{model} is already quantized; {what} the FP model")
    return bundle


def calibration_images(
    size: int, n_images: int, seed: int, degradation: dict[str, Any] | None = None
) -> torch.Tensor:
    """Degraded generated faces that no training or test set contains (the default inputs)."""
    import numpy as np
    import torch

    from quantface.data.degradation import DegradationConfig, degrade
    from quantface.data.synthetic_faces import generate_face
    from quantface.io import to_tensor
    from quantface.restore import fit_to_model

    seq = np.random.SeedSequence([seed, CALIBRATION_FACES_SEED])
    base = seq.generate_state(1)[0] % 100_000_000
    deg = DegradationConfig.from_dict(degradation or {})
    rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_images))
    arrays = [degrade(generate_face(int(base) + i, size), rng, deg) for i, rng in enumerate(rngs)]
    return torch.stack([fit_to_model(to_tensor(a), size) for a in arrays])


def calibrate(
    model: str | Path | RestorerBundle,
    images: str | Path | None = None,
    *,
    n_images: int = 32,
    batch_size: int = 8,
    sample_rows: int = 512,
    seed: int = 0,
    degradation: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
) -> CalibrationSet:
    """Per-layer activation statistics of the FP `model` over `images` (a folder), or over
    `n_images` degraded generated faces. A model given as a file is recorded in the result, so
    `quantize` refuses statistics of another model."""
    import torch

    from quantface.io import list_images
    from quantface.quant.calibration import collect_calibration
    from quantface.restore import load_for_model

    enter_stage("load model")
    bundle = _fp_model(model, device, "calibrate")
    if images is not None:
        files = list_images(Path(images))[:n_images]
        inputs = torch.stack([load_for_model(p, bundle.image_size) for p in files])
    else:
        inputs = calibration_images(bundle.image_size, n_images, seed, degradation)
    enter_stage("calibration forward")
    calib = collect_calibration(bundle, inputs, batch_size, sample_rows, seed)
    if isinstance(model, str | Path):
        calib.record_model(Path(model))
    log.info(
        "calibration statistics for %d sites from %d images", len(calib.meta["sites"]), len(inputs)
    )
    return calib


def _calibration(
    calib: str | Path | CalibrationSet, model: str | Path | RestorerBundle, device
) -> CalibrationSet:
    """A calibration set, loaded onto `device` from a file, which must have been made from the
    model file given (its recorded SHA-256): another model's statistics would pass silently."""
    from quantface.device import as_device
    from quantface.quant.calibration import CalibrationSet

    if not isinstance(calib, str | Path):
        return calib
    path = Path(calib)
    loaded = CalibrationSet.load(path, device=as_device(device))
    if isinstance(model, str | Path):
        loaded.check_model(Path(model), path)
    return loaded


def balanced_calibration(
    model: str | Path | RestorerBundle,
    calib: str | Path | CalibrationSet,
    options: dict[str, Any] | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
) -> CalibrationSet:
    """Activation statistics of the FP `model` after QuantFace's rotation-scaling balancing,
    fitted to the statistics `calib` and measured on its images: what QuantFace's activation
    quantizers see, the activation-distribution figure's "after balancing" row. `options` are
    QuantFace's (`method_options.quantface`); its `balancing`, `alpha` and `seed` apply."""
    from quantface.methods.quantface_options import QuantFaceOptions
    from quantface.methods.rotation_scaling import balanced_calibration as balance

    opts = QuantFaceOptions.from_dict(options or {}, "quantface")
    enter_stage("load model")
    fp = _fp_model(model, device, "balance")
    calib = _calibration(calib, model, device)
    enter_stage("balanced forward")
    return balance(fp, calib, opts.balancing, opts.alpha, opts.seed, batch_size)


def quantize(
    model: str | Path | RestorerBundle,
    method: str,
    bits: str,
    calib: str | Path | CalibrationSet,
    options: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    scheme: QuantScheme | dict[str, Any] | None = None,
    label: str | None = None,
) -> QuantizeResult:
    """Quantize the FP `model` with a registered `method` at `bits` (e.g. "w4a4", or "mp4"
    for a mixed-precision method), from calibration statistics made from that model.
    `scheme` replaces the method's own quantizers (a `QuantScheme` or its keys: the matched
    protocol); None runs the method's paper's quantizers. `label` names the result in cost.json
    and the tables (an ablation variant, "matched/maxmin"; default: the method)."""
    from quantface.methods.pipeline import quantize_bundle
    from quantface.quant.plan import BitPlan, parse_bits
    from quantface.quant.scheme import QuantScheme
    from quantface.registry import METHODS

    if isinstance(scheme, dict):
        scheme = QuantScheme.from_dict(scheme, "--scheme")
    setting = parse_bits(bits)
    mixed = METHODS.attr(method, "mixed_precision", False)
    enter_stage("load model")
    fp = _fp_model(model, device, "quantize")
    calib = _calibration(calib, model, device)
    if setting.mixed and not mixed:
        raise QuantFaceError(f"method '{method}' has no mixed-precision mode for '{bits}'")
    if mixed and not setting.mixed:
        raise QuantFaceError(
            f"method '{method}' allocates bits itself: use an mpX bit setting, not '{bits}'"
        )
    plan = BitPlan.uniform(fp.quant_targets(), setting.w_bits, setting.a_bits)
    enter_stage(f"quantize {method} {bits}")
    try:
        result = quantize_bundle(
            method, fp, calib, plan, options, scheme, bits=bits, seed=seed, label=label
        )
    except NumericsError as e:
        raise NumericsError(f"{method} {bits}: {e}") from e
    log.info("%s %s quantization took %.1f s", method, bits, result.seconds)
    log_timing("quantize_total", 1, result.seconds)
    return result


def restore(
    model: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    batch_size: int = 8,
    keep_size: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
) -> int:
    """Restore every face image of `input_dir` into `output_dir` (never replacing a file the
    suite did not write); returns how many images the folder holds."""
    from quantface.device import as_device
    from quantface.restore import restore_folder

    return restore_folder(
        model,
        input_dir,
        output_dir,
        batch_size,
        keep_size=keep_size,
        overwrite=overwrite,
        device=as_device(device),
    )


def restore_photos(
    model: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Restore every face of whole photos (a folder or one file) and paste each back (needs the
    `faces` extra); returns the run's summary (photos, faces, photos without a face, seconds)."""
    from quantface.device import as_device
    from quantface.photos import restore_photos as restore_whole

    return restore_whole(
        model,
        input_path,
        output_dir,
        batch_size=batch_size,
        overwrite=overwrite,
        device=as_device(device),
    )


def evaluate(
    pred: str | Path,
    metrics: list[str],
    *,
    out: str | Path,
    ref: str | Path | None = None,
    fp: str | Path | None = None,
    labels: dict[str, Any] | None = None,
    weights_dir: str | Path = "results/.weights",
    batch_size: int = 8,
    manifest: str | Path | None = None,
    device: str | torch.device = "auto",
) -> pd.DataFrame:
    """Score the images of `pred` (against `ref`, the HQ folder, and `fp`, the FP model's
    restorations, where a metric needs them); writes `out` and its per-image scores beside it.
    `manifest` (a dataset's manifest.json) checks that `pred` holds every image it lists."""
    from quantface.device import as_device
    from quantface.evaluate import evaluate_folder

    return evaluate_folder(
        pred=Path(pred),
        ref=Path(ref) if ref else None,
        fp=Path(fp) if fp else None,
        metrics=list(metrics),
        out=Path(out),
        labels=labels or {},
        weights_dir=Path(weights_dir),
        batch_size=batch_size,
        manifest=Path(manifest) if manifest else None,
        device=as_device(device),
    )
