import copy
from pathlib import Path

import pytest
import yaml

from quantface.config import load_config, validate_config
from quantface.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS_MICRO = ("config/config.yaml", "config/micro.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_is_valid():
    load_config(ROOT / "config" / "config.yaml")


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda c: c.update(colour="red"), "<top level>"),
        (lambda c: c["model"].update(nme="tiny"), "'model'"),
        (lambda c: c["calibration"].update(n_images="many"), "calibration.n_images"),
        (lambda c: c.update(methods=["maxmin", "nosuchmethod"]), "'methods'"),
        (lambda c: c["data"]["datasets"].update(nosuchset={"n_images": 2}), "data.datasets"),
        (
            lambda c: c["metrics"].update(no_reference=["niqe", "nosuchmetric"]),
            "metrics.no_reference",
        ),
        (lambda c: c.update(bits=["w4a4", "w4a"]), "'bits'"),
        (lambda c: c.update(bits=["w0a4"]), "'bits'"),
        (lambda c: c["report"].update(qualitative_bits="w2a2"), "report.qualitative_bits"),
        (lambda c: c["model"].update(name="nosuchmodel"), "model.name"),
        (lambda c: c["model"]["arch"].update(unet_chanels=[8, 16]), "model.arch.unet_chanels"),
        (lambda c: c["model"]["train"].update(pixel_step=3), "model.train.pixel_step"),
        (lambda c: c["metrics"]["full_reference"].append("ms_ssim"), "metrics.full_reference"),
        (lambda c: c.update(protocol=["matched"]), "'protocol'"),
        (lambda c: c.update(protocol=["native", "macthed"]), "'protocol'"),
        (lambda c: c["protocols"]["matched"].update(act_granularity="pixel"), "protocols.matched"),
        (lambda c: c["protocols"].update(native={}), "'protocols'"),
        (lambda c: c.update(protocol_bits=["w4a"]), "'protocol_bits'"),
        (lambda c: c.update(protocol_methods=["svdqaunt"]), "'protocol_methods': unknown method"),
        (lambda c: c.update(seeds=[1, 2]), "'seeds'"),  # the run's seed 0 is missing
        (lambda c: c.update(seeds=[0, 0]), "'seeds'"),
        (lambda c: c["protocols"].update(seed1={}), "protocols.seed1"),
    ],
)
def test_invalid_configs_name_the_key(config, mutate, key):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_names_list_the_known_ones(config):
    config["methods"] = ["maxmim"]
    with pytest.raises(ConfigError, match="known: .*maxmin"):
        validate_config(config)


def test_protocol_cells_pair_every_method_with_its_native_bits(config):
    from quantface.config import protocol_cells, resolve_method, resolve_scheme

    cells = protocol_cells(config)
    assert ("matched/maxmin", "w4a4") in cells and ("matched/quantface", "w4a4") in cells
    assert not any(b == "w6a6" for _, b in cells)  # protocol_bits: w4a4 and mp4 only
    assert [c for c, _ in cells] == [f"matched/{m}" for m in config["protocol_methods"]]
    assert protocol_cells({**config, "methods": ["maxmin"]}) == [("matched/maxmin", "w4a4")]
    del config["protocol_methods"]  # absent: every method, mp4 for the mixed-precision one
    cells = protocol_cells(config)
    assert len(cells) == len(config["methods"]) and ("matched/quantface_mp", "mp4") in cells
    assert resolve_method(config, "matched/quarot") == resolve_method(config, "quarot")
    assert resolve_scheme(config, "matched/quarot") == {"exceptions": False}
    assert resolve_scheme(config, "quarot") is None
    config["protocol"] = ["native", "matched_token"]
    assert resolve_scheme(config, "matched_token/maxmin")["act_granularity"] == "token"
    config["protocol"] = ["native"]
    assert protocol_cells(config) == []


def test_seed_cells_repeat_every_native_cell_per_extra_seed(config):
    from quantface.config import (
        cell_seed,
        quantized_cells,
        resolve_method,
        resolve_scheme,
        seed_cells,
    )

    assert seed_cells(config) == []  # absent: the run's seed alone
    config["seeds"] = [0, 1, 2]
    cells = seed_cells(config)
    native = quantized_cells(config["methods"], config["bits"])
    assert len(cells) == 2 * len(native) and ("seed2/quantface_mp", "mp4") in cells
    assert not any(c.startswith("seed0/") for c, _ in cells)  # seed 0 is the plain rows
    assert cell_seed("seed2/quarot") == 2 and cell_seed("quarot") is None
    assert cell_seed("matched/quarot") is None
    assert resolve_scheme(config, "seed2/quarot") is None  # native quantizers
    assert resolve_method(config, "seed2/qdiffusion") == resolve_method(config, "qdiffusion")


def test_a_custom_architecture_is_built_once_then_remembered(tmp_path, monkeypatch):
    """The Snakefile's parse validates a custom `model.arch` by building it; after one success a
    fresh process checks the same architecture without importing torch, and an architecture
    that does not build still fails (failures are never remembered)."""
    import os
    import subprocess
    import sys
    import textwrap

    from quantface.config import merge_configs

    code = textwrap.dedent(
        """
        import sys
        from quantface.config import load_config, merge_configs, validate_config
        validate_config(merge_configs([load_config(f, validate=False)
                                       for f in ("config/config.yaml", "config/micro.yaml")]))
        print("torch imported:", "torch" in sys.modules)
        """
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def check() -> str:
        cmd = [sys.executable, "-c", code]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    assert "torch imported: True" in check()  # built once
    assert len(list((tmp_path / "quantface" / "architectures").iterdir())) == 1
    assert "torch imported: False" in check()  # remembered
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    micro = merge_configs([load_config(ROOT / f, validate=False) for f in CONFIGS_MICRO])
    micro["model"]["arch"]["unet_norm_groups"] = 7
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"divisible by num_groups \(7\)"):
            validate_config(copy.deepcopy(micro))
    assert len(list((tmp_path / "quantface" / "architectures").iterdir())) == 1


def test_the_remembered_build_depends_on_the_libraries_and_the_model_code(monkeypatch):
    from quantface import validation_cache

    arch = {"unet_channels": [16, 32], "image_size": 32}
    key = validation_cache.build_key("tiny", "quantface.models.tiny", arch)
    assert key == validation_cache.build_key("tiny", "quantface.models.tiny", dict(arch))
    assert key != validation_cache.build_key("tiny", "quantface.models.tiny", {**arch, "x": 1})
    monkeypatch.setattr(validation_cache, "_version", lambda dist: "0.0-other")
    assert key != validation_cache.build_key("tiny", "quantface.models.tiny", arch)
    monkeypatch.undo()
    real_read = Path.read_bytes
    edited = ROOT / "quantface" / "models" / "tiny.py"
    monkeypatch.setattr(
        Path, "read_bytes", lambda p: real_read(p) + (b"#" if p.name == edited.name else b"")
    )
    assert key != validation_cache.build_key("tiny", "quantface.models.tiny", arch)
