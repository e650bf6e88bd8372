"""Layers know their place: the quantization core imports nothing above it.

quantface/quant/ (quantizers, layers, calibration, ranges, cost, packing, distillation,
reconstruction) works on any `nn.Module` that meets its `QuantTarget` protocol; the model
adapters (quantface/models/) import the core to find their sites, the methods build on both, and
the API and CLI on all of them. An import the other way would tie the core to one model family.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_CORE = ("quantface.models", "quantface.methods", "baselines", "quantface.api")
ABOVE_THE_CORE += ("quantface.cli", "quantface.restore", "quantface.evaluate")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_quantization_core_imports_no_model_method_or_front_end():
    core = sorted((ROOT / "quantface" / "quant").glob("*.py"))
    assert len(core) > 10
    wrong = {
        f"{p.name}: {name}" for p in core for name in _imports(p) if name.startswith(ABOVE_THE_CORE)
    }
    assert not wrong, sorted(wrong)


def test_models_do_not_import_methods_or_front_ends():
    wrong = {
        f"{p.name}: {name}"
        for p in sorted((ROOT / "quantface" / "models").glob("*.py"))
        for name in _imports(p)
        if name.startswith(ABOVE_THE_CORE[1:])
    }
    assert not wrong, sorted(wrong)
