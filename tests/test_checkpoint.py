import copy
import pickle

import pytest
import torch

from quantface.errors import CheckpointError
from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import current_layout
from quantface.quant.calibration import CalibrationSet, collect_calibration
from quantface.quant.plan import BitPlan


@torch.no_grad()
def test_fp_and_quantized_bundles_round_trip_exactly(micro_model, micro_images, tmp_path):
    save_bundle(micro_model, tmp_path / "fp.pt")
    fp, layout, _ = load_bundle(tmp_path / "fp.pt")
    assert layout == {}
    assert torch.equal(fp.restore(micro_images), micro_model.restore(micro_images))

    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    calib.save(tmp_path / "calib.pt")
    calib = CalibrationSet.load(tmp_path / "calib.pt")
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle("maxmin", micro_model, calib, plan, {}).model
    save_bundle(q, tmp_path / "q.pt", layout=current_layout(q), meta={"method": "maxmin"})
    q2, layout2, meta = load_bundle(tmp_path / "q.pt")
    assert meta["method"] == "maxmin" and len(layout2) == len(plan)
    assert torch.equal(q2.restore(micro_images), q.restore(micro_images))
    # the FP model handed to the method is untouched
    assert torch.equal(micro_model.restore(micro_images), fp.restore(micro_images))


def test_bad_checkpoints_are_named(tmp_path, micro_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_bundle(tmp_path / "missing.pt")
    save_bundle(micro_model, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_bundle(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a QuantFace"):
        load_bundle(tmp_path / "other.pt")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["version"] = 999
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 999"):
        load_bundle(tmp_path / "future.pt")
    payload["version"] = 1
    payload["config"] = {**payload["config"], "unet_channels": [8, 16]}
    torch.save(payload, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="architecture"):
        load_bundle(tmp_path / "arch.pt")


class _Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path, capsys):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": _Boom()}))
    with pytest.raises(CheckpointError):
        load_bundle(tmp_path / "evil.pt")
    assert "pickle code ran" not in capsys.readouterr().out
