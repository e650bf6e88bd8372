"""Deployment on ONNX Runtime: every site form is exact, every method exports and agrees with its
simulation, the graph really holds integer kernels, a model ORT cannot run is one line, and the
deploy CLI, table and Snakemake target work."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from quantface.cli import main
from quantface.deploy.bench import psnr
from quantface.deploy.onnx_export import (
    FLOAT,
    INT_ATTN,
    INT_CONV,
    INT_LINEAR,
    INT_TOKEN,
    QDQ,
    data_path,
    export_mode,
    export_onnx,
    onnx_bytes,
    site_paths,
)
from quantface.deploy.runtime import EngineError, integer_ops, run, session
from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import save_bundle
from quantface.models.tiny import TinyRestorer
from quantface.quant.apply import calibrate_weights, current_layout, observe_activation_ranges
from quantface.quant.calibration import collect_calibration
from quantface.quant.layers import QuantMatMul
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import wrap_model
from tests.conftest import MICRO_ARCH
from tests.test_scheme import ONE_STEP

# ORT vs the fake-quant simulation on the whole micro restorer. Each site alone agrees to float
# rounding (test_every_site_form_matches_its_simulation); end to end a code that lands on a
# rounding tie may flip between the two summation orders and move later layers, which the
# untrained micro model amplifies. 30 dB is far below the quantization error (PSNR-FP) itself.
AGREEMENT_DB = 30.0


def _micro() -> TinyRestorer:
    torch.manual_seed(0)
    model = TinyRestorer(MICRO_ARCH).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    return model


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def calib(faces):
    return collect_calibration(_micro(), torch.cat([faces, faces.flip(-1)]), 2, 64)


def _ort(path, x: torch.Tensor) -> np.ndarray:
    sess = session(path, 1)
    return np.concatenate([run(sess, x[i : i + 1].numpy()) for i in range(len(x))])


# what the engine runs for each method's native quantizers (module docstring of onnx_export)
EXPECTED = {
    "maxmin": {INT_CONV, INT_LINEAR, INT_ATTN},
    "smoothquant": {INT_CONV, INT_LINEAR, INT_ATTN},
    "qdiffusion": {INT_CONV, INT_LINEAR, INT_ATTN, FLOAT},  # split layers, 16-bit softmax
    "passionsr": {INT_CONV, INT_LINEAR, INT_ATTN},
    "efficientdm": {INT_CONV, INT_LINEAR, INT_ATTN},
    "quarot": {INT_TOKEN, FLOAT},  # per-pixel k x k convs and per-token attention: float
    "svdquant": {INT_TOKEN, FLOAT},
    "quantface": {INT_TOKEN, FLOAT},
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_every_method_at_w8a8_runs_in_ort_with_integer_kernels(method, calib, faces, tmp_path):
    fp = _micro()
    plan = BitPlan.uniform(fp.quant_targets(), 8, 8)
    q = quantize_bundle(method, fp, calib, plan, ONE_STEP.get(method, {})).model
    info = export_onnx(q, tmp_path / "m.onnx")
    assert set(info["paths"]) == EXPECTED[method]
    with torch.no_grad():
        sim = q.restore(faces).numpy()
    sess = session(tmp_path / "m.onnx", 1, optimized=tmp_path / "opt.onnx")
    out = np.concatenate([run(sess, faces[i : i + 1].numpy()) for i in range(len(faces))])
    assert psnr(out, sim) >= AGREEMENT_DB
    ops = integer_ops(Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node))
    integer = [n for n, p in info["sites"].items() if p != FLOAT]
    # the optimized graph ORT runs holds them all, but for the timestep MLP and each resnet's
    # time projection: they read only the fixed timestep, so ORT folds them into constants
    on_image = [n for n in integer if "time_emb" not in n]
    assert sum(ops.values()) >= len(on_image) > 0


def test_above_the_size_limit_tensors_go_to_one_data_file_ort_loads(calib, faces, tmp_path):
    """The > 2 GB path, forced on the micro model: same graph and output as the one-file export,
    the tensors in `<name>.data` beside the .onnx, no temp files left behind."""
    fp = _micro()
    q = quantize_bundle("maxmin", fp, calib, BitPlan.uniform(fp.quant_targets(), 8, 8), {}).model
    one, split = tmp_path / "one" / "m.onnx", tmp_path / "split" / "m.onnx"
    export_onnx(q, one)
    info = export_onnx(q, split, external_above=0)
    assert not data_path(one).exists()
    assert sorted(p.name for p in split.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert split.stat().st_size < one.stat().st_size < onnx_bytes(split)
    model = onnx.load(str(split), load_external_data=False)
    stored = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert stored and {e.value for t in stored for e in t.external_data if e.key == "location"} == {
        "m.onnx.data"
    }
    assert info["nodes"] == dict(Counter(n.op_type for n in onnx.load(str(one)).graph.node))
    np.testing.assert_array_equal(_ort(split, faces), _ort(one, faces))


def test_above_the_size_limit_constant_nodes_go_to_the_data_file_too(calib, faces, tmp_path):
    """A per-token method's graph holds its Hadamards and its float sites' weights as Constant
    nodes, not initializers: they must leave the protobuf as well, or a graph above 2 GB cannot
    be written (QuaRot and SVDQuant at SD-2.1 size failed so)."""
    fp = _micro()
    plan = BitPlan.uniform(fp.quant_targets(), 8, 8)
    q = quantize_bundle("quarot", fp, calib, plan, {}).model
    path = tmp_path / "m.onnx"
    export_onnx(q, path, external_above=0)
    model = onnx.load(str(path), load_external_data=False)
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute]
    itemsize = {
        t.data_type: helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in constants
    }
    large = [t for t in constants if np.prod(t.dims) * itemsize[t.data_type] >= 1024]
    assert large and all(t.data_location == TensorProto.EXTERNAL for t in large)
    with torch.no_grad():
        sim = q.restore(faces).numpy()
    assert psnr(_ort(path, faces), sim) >= AGREEMENT_DB


def test_tensor_files_torch_writes_below_our_limit_still_go_to_one_data_file(
    calib, faces, tmp_path, monkeypatch
):
    """torch decides by its own measure when to write tensors beside the .onnx; where it does
    so below our size limit (Q-Diffusion at SD-2.1 size), the export must still keep them."""
    real_export = torch.onnx.export

    def export_with_tensor_files(module, args, f, **kwargs):
        real_export(module, args, f, **kwargs)
        model = onnx.load(f)
        onnx.save_model(model, f, save_as_external_data=True, all_tensors_to_one_file=False)

    monkeypatch.setattr(torch.onnx, "export", export_with_tensor_files)
    fp = _micro()
    q = quantize_bundle("maxmin", fp, calib, BitPlan.uniform(fp.quant_targets(), 8, 8)).model
    path = tmp_path / "out" / "m.onnx"
    export_onnx(q, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    with torch.no_grad():
        sim = q.restore(faces).numpy()
    assert psnr(_ort(path, faces), sim) >= AGREEMENT_DB


def test_the_optimized_graph_keeps_large_tensors_beside_it(tmp_path, monkeypatch):
    """ORT writes the graph it runs with its large initializers in a data file, as the export
    does, so a graph above protobuf's 2 GB (the SD-2.1-size FP model) can be written and its
    operators counted; forced here with a 1-byte threshold."""
    from quantface.deploy import runtime

    lin = torch.nn.Linear(64, 32)
    torch.onnx.export(lin, (torch.randn(1, 64),), tmp_path / "l.onnx", dynamo=False)
    monkeypatch.setattr(runtime, "EXTERNAL_MIN_BYTES", 1)
    out = tmp_path / "opt" / "l.onnx"
    out.parent.mkdir()
    session(tmp_path / "l.onnx", 1, optimized=out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["l.onnx", "l.onnx.data"]
    assert runtime.optimized_ops(tmp_path / "l.onnx")["Gemm"] == 1


def test_static_w4a4_clips_to_4_bit_codes_and_agrees(calib, faces, tmp_path):
    fp = _micro()
    plan = BitPlan.uniform(fp.quant_targets(), 4, 4)
    q = quantize_bundle("maxmin", fp, calib, plan, {}).model
    info = export_onnx(q, tmp_path / "m.onnx")
    assert FLOAT not in info["paths"] and info["nodes"]["Clip"] >= len(site_paths(q))
    with torch.no_grad():
        sim = q.restore(faces).numpy()
    assert psnr(_ort(tmp_path / "m.onnx", faces), sim) >= AGREEMENT_DB


def _layout_with_every_form(model: TinyRestorer) -> dict[str, LayerQuant]:
    """Static/per-token, symmetric/asymmetric, 4/8-bit, and every transform a method saves."""
    sites = model.quant_targets()
    plan = BitPlan.uniform(sites, 8, 8)
    from quantface.quant.scheme import QuantScheme

    layout = QuantScheme().layout(model, sites, plan)
    linears = [n for n, k in sites.items() if k == "linear"]
    convs = [n for n, k in sites.items() if k == "conv2d"]
    pointwise = [n for n in convs if model.get_submodule(n).kernel_size == (1, 1)]
    tok = QuantSpec(8, granularity="token", dynamic=True, channel_dim=-1)
    layout[linears[0]] = replace(  # QuaRot/QuantFace-style: Hadamard, low rank, asym tokens
        layout[linears[0]], a=tok, transform=InputTransform(True, True, 2, True)
    )
    sym_w = QuantSpec(4, symmetric=True, granularity="channel")
    layout[linears[1]] = replace(layout[linears[1]], a=replace(tok, symmetric=True), w=sym_w)
    layout[pointwise[0]] = replace(
        layout[pointwise[0]], a=replace(tok, channel_dim=1, clip_ratio=0.9)
    )
    layout[convs[0]] = replace(  # a padded conv with a shift (border tap map) and a scale
        layout[convs[0]], transform=InputTransform(scale=True, shift=True)
    )
    layout[convs[2]] = replace(layout[convs[2]], w=sym_w, a=replace(layout[convs[2]].a, bits=4))
    return layout


class _One(torch.nn.Module):
    """One site as a model (a submodule, so its parameters are the graph's initializers)."""

    def __init__(self, site: torch.nn.Module) -> None:
        super().__init__()
        self.site = site

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.site(*xs)


@torch.no_grad()
def test_every_site_form_matches_its_simulation(faces, tmp_path):
    model = _micro()
    wrap_model(model, _layout_with_every_form(model))
    g = torch.Generator().manual_seed(3)
    for mod in model.modules():
        for name, buf in mod.named_buffers(recurse=False):
            if name in ("input_scale",):
                buf.uniform_(0.5, 2.0, generator=g)
            elif name in ("input_shift", "shift_taps", "shift_bias"):
                buf.normal_(generator=g)
            elif name == "signs":
                buf.copy_(torch.randint(0, 2, buf.shape, generator=g) * 2.0 - 1)
        if hasattr(mod, "lowrank") and isinstance(mod.lowrank, torch.nn.Module):
            for p in mod.lowrank.parameters():
                p.data = (torch.randn(p.shape, generator=g) * 0.1).half().float()
    calibrate_weights(model)
    observe_activation_ranges(model, faces)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _, a, n=n: inputs.setdefault(n, a))
        for n, m in model.named_modules()
        if n in current_layout(model)
    ]
    model.restore(faces[:1])
    for h in hooks:
        h.remove()
    paths = site_paths(model)
    assert {INT_CONV, INT_LINEAR, INT_ATTN, INT_TOKEN} <= set(paths.values())
    for name, args in inputs.items():
        mod = model.get_submodule(name)
        ref = mod(*args)

        with export_mode(model):
            torch.onnx.export(_One(mod), args, tmp_path / "s.onnx", dynamo=False, opset_version=17)
        sess = session(tmp_path / "s.onnx", 1)
        feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
        out = sess.run(None, feeds)[0]
        scale = ref.abs().max().item() + 1e-6
        assert np.abs(out - ref.numpy()).max() / scale < 1e-4, (name, paths[name])
        if isinstance(mod, QuantMatMul) or paths[name] == FLOAT:
            continue
        types = {n.op_type for n in onnx.load(tmp_path / "s.onnx").graph.node}
        assert types & {"ConvInteger", "MatMulInteger"}, (name, types)


def _imagedecoder_model(path) -> None:
    node = helper.make_node("ImageDecoder", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)


def test_a_model_ort_cannot_run_is_one_line_naming_the_operator(tmp_path, capsys):
    _imagedecoder_model(tmp_path / "bad.onnx")
    with pytest.raises(EngineError, match=r"no kernel for operator ImageDecoder \(opset 20\)"):
        session(tmp_path / "bad.onnx", 1)
    save_bundle(_micro(), tmp_path / "fp.pt")
    argv = [
        "deploy-bench",
        "--model",
        str(tmp_path / "fp.pt"),
        "--onnx",
        str(tmp_path / "bad.onnx"),
    ]
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImageDecoder" in err[0] and not (tmp_path / "b.json").exists()


def test_export_format_onnx_bench_and_deploy_table(calib, faces, tmp_path):
    fp = _micro()
    save_bundle(fp, tmp_path / "fp.pt")
    q = quantize_bundle(
        "smoothquant", _micro(), calib, BitPlan.uniform(fp.quant_targets(), 8, 8), {}
    ).model
    save_bundle(
        q,
        tmp_path / "q.pt",
        layout=current_layout(q),
        meta={"method": "smoothquant", "bits": "w8a8"},
    )
    for name in ("fp", "q"):
        argv = ["export", "--format", "onnx", "--model", str(tmp_path / f"{name}.pt")]
        argv += [
            "--out",
            str(tmp_path / f"{name}.onnx"),
            "--report",
            str(tmp_path / f"{name}.json"),
        ]
        assert main([*argv, "--verify"]) == 0
        argv = [
            "deploy-bench",
            "--model",
            str(tmp_path / f"{name}.pt"),
            "--fp",
            str(tmp_path / "fp.pt"),
        ]
        argv += [
            "--onnx",
            str(tmp_path / f"{name}.onnx"),
            "--out",
            str(tmp_path / f"{name}.b.json"),
        ]
        assert main([*argv, "--warmup", "1", "--runs", "3"]) == 0
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["psnr_vs_sim"] >= AGREEMENT_DB and report["ort_integer_ops"]["ConvInteger"] > 0
    bench = json.loads((tmp_path / "fp.b.json").read_text())
    assert [r["engine"] for r in bench["rows"]] == ["torch FP32", "ORT FP32"]
    out = tmp_path / "tables"
    argv = ["deploy-report", "--bench", str(tmp_path / "fp.b.json"), str(tmp_path / "q.b.json")]
    assert main([*argv, "--out", str(out), "--figure", str(tmp_path / "fig.png")]) == 0
    md = (out / "deploy.md").read_text()
    assert (
        "onnxruntime" in md and "shared machine" in md and "| smoothquant | w8a8 | ORT int |" in md
    )
    assert (tmp_path / "fig.png").stat().st_size > 0
    # the packed format still needs its size report: one line, exit 2
    argv = ["export", "--model", str(tmp_path / "q.pt"), "--out", str(tmp_path / "p.safetensors")]
    assert main(argv) == 2


def test_snakemake_deploy_target_plans_every_model(tmp_path):
    from tests.test_workflow import snakemake

    r = snakemake(tmp_path, "-n", "deploy")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    for rule in ("deploy_export", "deploy_bench", "deploy"):
        assert rule in out
    assert "results/deploy/tiny/fp/bench.json" in out  # FP32 torch + ORT baseline row


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def test_qdq_flavour_puts_symmetric_int8_qdq_pairs_in_front_of_every_static_site(
    calib, faces, tmp_path
):
    """The TensorRT layout (checked up to the engine build: no TensorRT here): every quantized
    Conv/MatMul reads DequantizeLinear outputs only, symmetric int8 with zero point 0."""
    fp = _micro()
    q = quantize_bundle(
        "smoothquant", fp, calib, BitPlan.uniform(fp.quant_targets(), 8, 8), {}
    ).model
    info = export_onnx(q, tmp_path / "m.onnx", flavor="qdq")
    assert set(info["paths"]) == {QDQ}
    model = onnx.load(tmp_path / "m.onnx")
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    fed = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul")
        and all(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
            for i in n.input[:2]
        )
    ]
    assert len(fed) == len(info["sites"])  # one QDQ-fed op per quantized site
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = consts[n.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), n.name
    with torch.no_grad():
        sim = q.restore(faces).numpy()
    assert psnr(_ort(tmp_path / "m.onnx", faces), sim) >= AGREEMENT_DB


def test_whole_unet_benchmark_runs_every_engine_and_leaves_no_files(tmp_path):
    """`deploy_sd21.py --whole-unet` on a small UNet: the same code as the SD-2.1 run."""
    from benchmarks.deploy_sd21 import whole_unet
    from quantface.models.sd21 import SD21_UNET

    small = {
        **SD21_UNET,
        "block_out_channels": [32, 64],
        "attention_head_dim": [2, 4],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "sample_size": 16,
        "layers_per_block": 1,
    }
    args = argparse.Namespace(threads=1, warmup=0, runs=1, workdir=str(tmp_path))
    rows = [line.split(" | ") for line in whole_unet(args, small) if line.startswith("| ")][1:]
    assert [r[0] for r in rows] == ["| torch FP32", "| ORT FP32", "| ORT MaxMin W8A8"]
    assert float(rows[1][5]) < 1e-5  # ORT FP32 against torch FP32
    assert list(tmp_path.iterdir()) == []


def test_osdface_with_its_vre_and_seeded_posterior_sample_exports_and_agrees(tmp_path):
    """The paper's model exports whole: the VRE's token selection and OSDFace's seeded
    posterior sample (a constant of the graph) have ONNX forms; FP and MaxMin W8A8 agree."""
    from quantface.models.osdface import OSDFaceRestorer
    from tests.paper_assets import IMAGE_SIZE, TINY_ARCH, write_osdface_assets

    assets = write_osdface_assets(tmp_path / "assets")
    fp = OSDFaceRestorer.from_assets({k: str(v) for k, v in assets.items()}, TINY_ARCH).eval()
    x = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    export_onnx(fp, tmp_path / "fp.onnx")
    with torch.no_grad():
        ref = fp.restore(x).numpy()
    assert np.abs(_ort(tmp_path / "fp.onnx", x) - ref).max() < 1e-4
    calib = collect_calibration(fp, x, 2, 64)
    q = quantize_bundle("maxmin", fp, calib, BitPlan.uniform(fp.quant_targets(), 8, 8)).model
    info = export_onnx(q, tmp_path / "q.onnx")
    assert INT_CONV in info["paths"]
    with torch.no_grad():
        sim = q.restore(x).numpy()
    assert psnr(_ort(tmp_path / "q.onnx", x), sim) >= AGREEMENT_DB


# --- TensorRT: the layout checked here, the engine built and timed on a GPU ---------------------
def _w8a8_onnx(calib, tmp_path, method: str, flavor: str):
    fp = _micro()
    q = quantize_bundle(method, fp, calib, BitPlan.uniform(fp.quant_targets(), 8, 8), {}).model
    path = tmp_path / f"{method}_{flavor}.onnx"
    export_onnx(q, path, flavor=flavor)
    return path


def test_tensorrt_layout_check_passes_the_symmetric_qdq_export_and_names_what_it_rejects(
    calib, tmp_path
):
    from quantface.deploy.tensorrt import TensorRTError, check_layout

    ok = check_layout(_w8a8_onnx(calib, tmp_path, "smoothquant", "qdq"))
    assert ok["qdq_fed_ops"] > 0 and ok["quantize_linear"] > 0, ok
    assert ok["dequantize_linear"] >= ok["quantize_linear"] + ok["qdq_fed_ops"] // 2, ok
    with pytest.raises(TensorRTError, match=r"Q/DQ nodes with an asymmetric grid \(uint8 zero"):
        check_layout(_w8a8_onnx(calib, tmp_path, "maxmin", "qdq"))  # asymmetric: uint8 codes
    with pytest.raises(TensorRTError, match=r"ONNX Runtime integer operators \(ConvInteger"):
        check_layout(_w8a8_onnx(calib, tmp_path, "smoothquant", "ort"))


def test_deploy_trt_without_tensorrt_stops_after_the_layout_check_in_one_line(
    calib, tmp_path, capsys, caplog, monkeypatch
):
    """Without TensorRT (CI, this machine) the command gets as far as it can: the graph passes
    the layout check, then one line names the missing extra; no engine file appears."""
    import importlib.util
    import logging

    caplog.set_level(logging.INFO)
    path = _w8a8_onnx(calib, tmp_path, "smoothquant", "qdq")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a)
    )
    engine = tmp_path / "m.engine"
    assert main(["deploy-trt", "--onnx", str(path), "--out", str(engine)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("quantface deploy-trt: error: tensorrt not installed"), line
    assert "quantface-bench[tensorrt]" in line and "layout check above passed" in line
    assert "TensorRT layout: quantize_linear" in caplog.text
    assert not engine.exists()


@pytest.mark.gpu
def test_deploy_trt_builds_and_times_an_engine_on_the_gpu(calib, tmp_path):
    pytest.importorskip("tensorrt")
    path = _w8a8_onnx(calib, tmp_path, "smoothquant", "qdq")
    engine, report = tmp_path / "m.engine", tmp_path / "trt.json"
    argv = ["deploy-trt", "--onnx", str(path), "--out", str(engine), "--report", str(report)]
    assert main([*argv, "--warmup", "1", "--runs", "3"]) == 0
    result = json.loads(report.read_text())
    assert engine.stat().st_size == result["engine_bytes"] > 0
    assert result["timing"]["median_ms"] > 0 and result["qdq_fed_ops"] > 0
