"""Registries find every entry from the sources (no module list, no import) and from entry points."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantface.registry import DATASETS, METHODS, METRICS, MODELS, Registry

ALL = (MODELS, METHODS, METRICS, DATASETS)


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.kind)
def test_the_source_index_agrees_with_what_importing_registers(registry):
    """Every name found in the sources is registered by importing its module, with the same
    description, and importing every module registers nothing the index missed."""
    index = registry.index()
    assert index, registry.kind
    for entry in {e.module for e in index.values()}:
        importlib.import_module(entry)
    assert set(registry._items) >= set(index)
    for name, entry in index.items():
        obj = registry.get(name)
        runtime = (getattr(obj, "doc", None) or obj.__doc__ or "").strip().splitlines()[0]
        assert entry.doc == runtime, name


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.kind)
def test_attributes_read_from_the_sources_are_the_imported_ones(registry):
    """`Registry.attr` answers from the source: every literal it read is the imported value, and
    a class it calls closed defines no name it does not know (so an absent one is absent)."""
    index = registry.index()
    for name, entry in index.items():
        obj = registry.get(name)
        for key, value in entry.attrs.items():
            assert getattr(obj, key) == value, (name, key)
        if entry.closed:
            defined = {
                k for klass in obj.__mro__[:-1] for k in vars(klass) if not k.startswith("__")
            }
            assert defined <= set(entry.attrs) | entry.dynamic, (name, defined - set(entry.attrs))
    assert any(e.closed for e in index.values()) or registry.kind != "method"


def test_the_config_check_imports_no_heavy_library():
    """check-config (and the Snakefile's parse) must stay cheap: nothing it reads needs torch."""
    code = textwrap.dedent(
        """
        import sys
        from quantface.config import (
            check_model_assets, load_config, merge_configs, validate_config
        )
        from quantface.registry import DATASETS
        retrain = {"model": {"train": {"from_scratch": True}}}  # model.train keys are checked
        for files in (["config/config.yaml"], ["config/config.yaml", "config/ablation.yaml"], ["config/config.yaml", retrain]):
            config = merge_configs([load_config(f, validate=False) if isinstance(f, str) else f for f in files])
            validate_config(config)
            check_model_assets(config)  # the Snakefile's parse runs these three
            [DATASETS.get(d)().paired for d in config["data"]["datasets"]]
        heavy = [m for m in ("torch", "diffusers", "pyiqa", "mip") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_listings_import_no_heavy_library():
    code = textwrap.dedent(
        """
        import sys
        from quantface.cli import main
        for command in ("methods", "metrics", "models", "datasets"):
            assert main([command]) == 0
        heavy = [m for m in ("torch", "diffusers", "pyiqa", "mip") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "maxmin" in r.stdout and "psnr" in r.stdout and "celeba_test" in r.stdout


def test_a_command_loads_diffusers_models_without_bitsandbytes_or_transformers():
    """A computing command's set-up loads diffusers' model code with its unused back-ends
    hidden (2.9 s of every job's start-up), and they stay importable afterwards; a command that
    loads no model skips diffusers altogether."""
    model = textwrap.dedent(
        """
        import argparse, sys
        from quantface.cli import _setup
        _setup(argparse.Namespace(command="quantize", seed=0, threads=1))
        from quantface.models.tiny import TinyRestorer  # diffusers UNet, VAE and scheduler
        loaded = [m for m in ("bitsandbytes", "transformers", "scipy") if m in sys.modules]
        assert not loaded, loaded
        import scipy.stats, transformers  # a metric or a user's code may still use them
        """
    )
    model_free = textwrap.dedent(
        """
        import argparse, sys
        from quantface.cli import MODEL_FREE, _setup
        _setup(argparse.Namespace(command="tables", seed=0, threads=1))
        import quantface.data.datasets, quantface.report.aggregate, quantface.report.deploy
        import quantface.deploy.tensorrt, quantface.report.tables
        assert "tables" in MODEL_FREE and "diffusers" not in sys.modules
        """
    )
    for code in (model, model_free):
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr[-2000:]


def test_an_installed_package_adds_a_method_through_an_entry_point(tmp_path, monkeypatch):
    """A third-party package, installed as pip lays it out (code + .dist-info with
    entry_points.txt), is found by name without being imported, and loads on first use."""
    pkg = tmp_path / "qf_thirdparty"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(
        textwrap.dedent(
            '''
            from quantface.registry import METHODS

            @METHODS.register("thirdparty_rtn")
            class ThirdPartyRTN:
                """A method from another package."""
            '''
        )
    )
    info = tmp_path / "qf_thirdparty-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qf-thirdparty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[quantface.methods]\nthirdparty_rtn = qf_thirdparty.mine\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "qf_thirdparty.mine", raising=False)
    fresh = Registry("method", "METHODS", ("quantface.methods", "baselines"))
    assert "thirdparty_rtn" in fresh.names() and "maxmin" in fresh.names()
    assert "qf_thirdparty.mine" not in sys.modules  # listed without importing it
    monkeypatch.setattr("quantface.registry.METHODS", fresh)
    assert fresh.get("thirdparty_rtn").__name__ == "ThirdPartyRTN"
    assert fresh.describe()["thirdparty_rtn"] == "A method from another package."


def test_an_unknown_name_lists_the_known_ones():
    from quantface.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown method 'nope'; known: .*maxmin"):
        METHODS.get("nope")


def test_version_flag(capsys):
    from quantface import __version__
    from quantface.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"quantface {__version__}"


def test_methods_carry_the_labels_tables_print():
    """Read from the sources (no import), and what the imported class says."""
    expected = {"maxmin": "MaxMin", "qdiffusion": "Q-Diffusion", "quantface_mp": "QuantFace-MP"}
    for name, label in expected.items():
        assert METHODS.label(name) == label == METHODS.get(name).label
    assert METHODS.label("my_ablation_variant") == "my_ablation_variant"
    for name in METHODS.names():
        assert METHODS.label(name) == getattr(METHODS.get(name), "label", name), name


def test_metrics_carry_the_label_decimals_and_unit_tables_and_figures_print():
    """Each metric states its own presentation at registration; the report reads it from the
    source (a report job imports no metric code and no torch) and it is the imported value."""
    code = textwrap.dedent(
        """
        import json, sys
        from quantface.registry import METRICS
        from quantface.report.tables import metric_decimals, metric_label, metric_unit
        out = {m: [metric_label(m), metric_decimals(m), metric_unit(m)] for m in METRICS.names()}
        loaded = [m for m in sys.modules if m.startswith("quantface.metrics.") or m == "torch"]
        assert not loaded, loaded
        print(json.dumps(out))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    shown = json.loads(r.stdout)
    for name, (label, decimals, unit) in shown.items():
        metric = METRICS.get(name)
        assert (label, decimals, unit) == (metric.label, metric.decimals, metric.unit), name
        assert label and label != name, name
    assert shown["psnr_fp"] == ["PSNR-FP", 2, "dB"]
    assert shown["deg"] == ["Deg.", 4, "degrees"] and shown["lpips"] == ["LPIPS", 4, ""]


def test_no_third_party_banner_once_quantface_is_imported():
    code = "import quantface, diffusers.models.autoencoders, mip  # noqa: F401"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as every run sets it
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for banner in ("gemm_4bit", "Using Python-MIP", "publisher trust check"):
        assert banner not in r.stderr, r.stderr
