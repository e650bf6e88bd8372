"""The SLURM profiles cover every cluster rule and agree with each other and the plugin."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "workflow" / "profiles"
LOCAL = {"aggregate", "tables", "figures"}
GPU_RULES = {
    "calibrate",
    "calibrate_seed",
    "calibrate_balanced",
    "quantize",
    "evaluate_input",
    "restore_evaluate_fp",
    "restore_evaluate",
    "restore_evaluate_ablation",
}


def _rules() -> tuple[set[str], set[str]]:
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules = set(re.findall(r"^rule (\w+):", text, re.MULTILINE))
    rules |= set(re.findall(r"^\s*use rule \w+ as (\w+)", text, re.MULTILINE))
    block = re.search(r"^localrules:\n((?:\s+\w+,?\n)+)", text, re.MULTILINE)
    return rules, set(re.findall(r"\w+", block.group(1))) if block else set()


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def test_every_cluster_rule_has_resources_and_report_rules_stay_local():
    rules, local = _rules()
    assert local == LOCAL
    for name in ("slurm", "slurm-gpu"):
        prof = _profile(name)
        assert prof["executor"] == "slurm"
        assert set(prof["set-resources"]) == rules - local, name
        assert set(prof["set-threads"]) == rules - local, name
        for rule, res in prof["set-resources"].items():
            assert res["mem_mb"] > 0 and res["runtime"] > 0, (name, rule)
        # placeholders come from the environment, never a hard-coded site
        assert prof["default-resources"]["slurm_partition"] == "$QUANTFACE_SLURM_PARTITION"
        assert prof["default-resources"]["slurm_account"] == "$QUANTFACE_SLURM_ACCOUNT"


def test_gpu_profile_differs_only_by_gpu_requests_and_sizes():
    cpu, gpu = _profile("slurm"), _profile("slurm-gpu")
    assert {r for r, res in gpu["set-resources"].items() if res.get("gpu")} == GPU_RULES
    assert not any("gpu" in res for res in cpu["set-resources"].values())
    # a GPU is requested exactly where the job is told to compute on it (--device cuda)
    assert {r for r, res in gpu["set-resources"].items() if res.get("device")} == GPU_RULES
    assert {res.get("device") for r, res in gpu["set-resources"].items() if r in GPU_RULES} == {
        "cuda"
    }
    assert not any("device" in res for res in cpu["set-resources"].values())
    drop = ("set-resources", "set-threads")
    assert {k: v for k, v in cpu.items() if k not in drop} == {
        k: v for k, v in gpu.items() if k not in drop
    }
