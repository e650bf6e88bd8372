"""The allocator thresholds (quantface/allocator.py): applied once per process, opt-out."""

import os
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")),
    reason="mallopt thresholds exist only in glibc",
)


def _in_fresh_process(env: dict[str, str]) -> str:
    code = "from quantface.allocator import keep_freed_memory as k; print(k(), k())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@glibc
def test_thresholds_are_set_on_glibc_and_stay_set():
    assert _in_fresh_process({"QUANTFACE_MALLOC": ""}) == "True True"


def test_quantface_malloc_default_keeps_glibcs_behaviour():
    assert _in_fresh_process({"QUANTFACE_MALLOC": "default"}) == "False False"


@glibc
def test_a_computing_command_sets_them(tmp_path):
    """`_setup` (every computing command) applies them; importing the CLI alone does not."""
    code = (
        "import json, sys; from quantface import allocator, cli; before = allocator._applied; "
        "opts = json.dumps({'n_images': 1, 'image_size': 32}); "
        "rc = cli.main(['prepare-data', '--dataset', 'synthetic_faces', '--out', sys.argv[1], "
        "'--options', opts]); print(before, rc, allocator._applied)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "syn")],
        env={**os.environ, "QUANTFACE_MALLOC": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.split() == ["False", "0", "True"], done.stderr[-2000:]
