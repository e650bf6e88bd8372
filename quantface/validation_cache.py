"""Which configured architectures have been seen to build, so the config check builds each once.

Why: `validate_config` builds a non-default embedded architecture (`model.arch`) to catch a
combination of keys that each pass the schema but do not build together. Building imports torch
and diffusers (`quantface check-config` on the micro config: 9.4 s, 0.6 s once remembered), and
the Snakefile runs that check at every parse: every `snakemake` call of a run with a small
custom architecture (the micro config, most of the test suite's workflow runs) paid it again. A build that succeeded is recorded as an empty marker file
named by a hash of everything the outcome depends on: the model name and architecture, the
torch and diffusers versions, and the bytes of the model code and the shipped assets it reads.
Change any of them and the architecture is built again; a failed build is never recorded, so a
bad architecture fails at every check.

The markers live in the user's cache folder (`$XDG_CACHE_HOME/quantface/architectures`, else
`~/.cache/...`), never in a results folder; an unwritable cache only means the build is repeated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).parent / "models"


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "quantface" / "architectures"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def build_key(model: str, module: str | None, arch: dict[str, Any]) -> str:
    """A hash of what decides whether `arch` builds: name, arch, library versions, model code
    (the quantface/models sources and the registered model's own module) and shipped assets."""
    h = hashlib.sha256(json.dumps({"model": model, "arch": arch}, sort_keys=True).encode())
    for dist in ("torch", "diffusers"):
        h.update(f"{dist}={_version(dist)};".encode())
    files = sorted(MODELS_DIR.glob("*.py")) + sorted((MODELS_DIR / "assets").glob("*"))
    spec = importlib.util.find_spec(module) if module else None
    if spec is not None and spec.origin and Path(spec.origin) not in files:
        files.append(Path(spec.origin))
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def seen_to_build(key: str) -> bool:
    return (cache_dir() / key).is_file()


def record_build(key: str) -> None:
    """Best effort: a cache that cannot be written costs one more build next time, nothing else."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        (cache_dir() / key).touch()
    except OSError:
        pass
