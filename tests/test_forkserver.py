"""The warm fork server (quantface/forkserver.py): the same command gives the same bytes, exit
code and messages through it as in a process of its own; a dead or missing server only makes a
command slower; a killed client or server leaves no command running."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from quantface import forkserver

pytestmark = pytest.mark.slow  # one server preload (~5 s) shared by the module

N_IMAGES = {"n_images": 8000, "image_size": 32}  # prepare-data for about 20 s


def _wait_for(path: str, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - t0 < timeout, "the fork server never came up"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("forkserver") / "server.log"
    with forkserver.running(log) as path:
        _wait_for(path)
        yield path


CLIENT = [sys.executable, "-c", "import sys; from quantface.cli import main; sys.exit(main())"]
SERVE_NOTHING = (
    "import sys; from quantface import forkserver; "
    "forkserver.serve(sys.argv[1], int(sys.argv[2]), load=lambda: None)"
)


def _env(server: str | None) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", forkserver.ENV: server or "0"}


def _quantface(*args: str, server: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLIENT, *args], check=False, capture_output=True, text=True, env=_env(server), timeout=300
    )


def _prepare_args(out: Path, n: dict) -> list[str]:
    return [
        "prepare-data",
        "--dataset",
        "synthetic_faces",
        "--out",
        str(out),
        "--options",
        json.dumps(n),
    ]


def _long_prepare(out: Path) -> list[str]:
    return [*CLIENT, *_prepare_args(out, N_IMAGES)]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _prepare(out: Path, server: str | None, n: dict) -> subprocess.CompletedProcess:
    return _quantface(*_prepare_args(out, n), server=server)


def test_a_command_through_the_server_writes_what_it_writes_alone(server, tmp_path):
    small = {"n_images": 3, "image_size": 32}
    warm, cold = (
        _prepare(tmp_path / "warm", server, small),
        _prepare(tmp_path / "cold", None, small),
    )
    assert warm.returncode == cold.returncode == 0, warm.stderr[-2000:]
    assert _digest(tmp_path / "warm") == _digest(tmp_path / "cold")
    assert "command: prepare-data" in warm.stderr  # the child logs to the client's stderr


def test_errors_keep_their_exit_code_and_line(server, tmp_path):
    bad = ["prepare-data", "--dataset", "synthetic_faces", "--out", str(tmp_path), "--options", "["]
    warm, cold = _quantface(*bad, server=server), _quantface(*bad, server=None)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1]
    listing = _quantface("methods", server=server)
    assert listing.returncode == 0 and listing.stdout == _quantface("methods", server=None).stdout


def test_a_missing_or_dead_server_runs_the_command_itself(tmp_path):
    stale = tmp_path / "gone.sock"
    stale.write_text("")  # a file where a socket was: connecting is refused
    for path in (str(tmp_path / "never.sock"), str(stale)):
        r = _quantface("methods", server=path)
        assert r.returncode == 0 and "quantface" in r.stdout


def _children(server_path: str) -> list[psutil.Process]:
    found = [
        p for p in psutil.process_iter(["cmdline"]) if server_path in (p.info["cmdline"] or [])
    ]
    pids = {p.pid for p in found}
    (srv,) = [p for p in found if p.ppid() not in pids]  # its forked children share its cmdline
    return srv.children()


def test_sigterm_to_the_client_stops_the_command(server, tmp_path):
    client = subprocess.Popen(
        _long_prepare(tmp_path / "d"), env=_env(server), stderr=subprocess.PIPE, text=True
    )
    while not _children(server):
        assert client.poll() is None, client.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list(tmp_path.rglob(".*.tmp"))  # the atomic writers cleaned up


def test_a_killed_client_leaves_no_command_running(server, tmp_path):
    client = subprocess.Popen(
        _long_prepare(tmp_path / "d"), env=_env(server), stderr=subprocess.DEVNULL
    )
    while not (kids := _children(server)):
        assert client.poll() is None
        time.sleep(0.05)
    client.kill()
    client.wait()
    _, alive = psutil.wait_procs(kids, timeout=5)  # far less than the command takes
    assert not alive, "the command outlived its killed client"


def test_the_server_exits_with_the_process_that_started_it(tmp_path):
    path = str(tmp_path / "s.sock")
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    srv = subprocess.Popen([sys.executable, "-c", SERVE_NOTHING, path, str(parent.pid)])
    _wait_for(path)
    parent.kill()
    parent.wait()
    assert srv.wait(timeout=30) == 0
    assert not os.path.exists(path)
