"""A warm process that forks one child per `quantface` command, so workflow jobs skip start-up.

Why: every job imports torch, diffusers and (to score) pyiqa before it works, about 4.5 s of a
13 s restore-and-score job on the 2-core machine and some 340 of the default run's job-seconds
over its 79 jobs. A fork of a process that has already imported them starts in milliseconds.

How: the Snakefile's `onstart` calls `start()` when jobs run on this machine. The server imports
what the commands import, then listens on a Unix socket (its path in `QUANTFACE_FORKSERVER`,
which every job inherits). A `quantface` process that finds the variable sends the server its
arguments, working directory, environment and its stdin/stdout/stderr (SCM_RIGHTS). The server
forks; the child takes over those descriptors, directory and environment, runs `cli.main` as the
process would have, and sends the exit code back. The client waits and forwards SIGTERM, SIGINT
and SIGHUP to the child, so Snakemake stopping a job stops its command as before.

What cannot go wrong silently:
- no server, a stale socket, a refused or dropped connection before the command starts: the
  client runs the command itself (the result is the same, only slower);
- the client dies (Snakemake killed): the child sees its socket close and stops as on SIGTERM,
  so its atomic writers delete their temp files;
- the server dies: its children get SIGTERM (Linux `PR_SET_PDEATHSIG`); the server itself exits
  when the process that started it is gone or its socket file is removed;
- a child killed by a signal (the kernel's OOM killer): the server reports 128 + signal.
The server runs no torch operation before it forks (no thread pool, no RNG draw): the child's
command seeds, pins its threads and computes exactly as a cold process does
(tests/test_forkserver.py compares a command's outputs both ways, bitwise).

Snakemake's `benchmark:` files measure the client, so under the server their max_rss and
cpu_time are the client's; wall seconds stay right. The job log's last line gives the command's
own CPU seconds and peak RSS. `QUANTFACE_FORKSERVER=0` in the environment turns the server off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

ENV = "QUANTFACE_FORKSERVER"
OFF = ("0", "off", "false", "no")
_HEADER = struct.Struct("!I")
_TICK_S = 0.5  # how often the server checks its parent and socket and reaps children
_PR_SET_PDEATHSIG = 1


# --- client ------------------------------------------------------------------------------------
def _send(sock: socket.socket, msg: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def _read(sock: socket.socket, n: int, n_fds: int = 0) -> tuple[bytes, list[int]]:
    """Exactly n bytes (fewer at end of stream), the descriptors with the first: never more, so
    a message that follows stays in the socket for the next read."""
    buf, fds = b"", []
    while len(buf) < n:
        if n_fds and not buf:
            chunk, fds, _, _ = socket.recv_fds(sock, n, n_fds)
        else:
            chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf, fds


def _recv(sock: socket.socket, n_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One message (and up to n_fds descriptors); None at end of stream."""
    header, fds = _read(sock, _HEADER.size, n_fds)
    if len(header) < _HEADER.size:
        return None, fds
    (size,) = _HEADER.unpack(header)
    data, _ = _read(sock, size)
    return (json.loads(data) if len(data) == size else None), fds


def run_remote(argv: list[str]) -> int | None:
    """Run `quantface argv` in a child of the server named by $QUANTFACE_FORKSERVER; its exit
    code, or None if there is no usable server (the caller then runs the command itself)."""
    path = os.environ.get(ENV, "")
    if not path or path.lower() in OFF or not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        _send(sock, request, [0, 1, 2])
        started, _ = _recv(sock)
    except OSError:
        sock.close()
        return None
    if started is None or "pid" not in started:  # the command never started: run it here
        sock.close()
        return None
    child = int(started["pid"])

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    done, _ = _recv(sock)  # a forwarded signal interrupts nothing: Python retries the read
    sock.close()
    return 1 if done is None else int(done["exit"])


# --- server ------------------------------------------------------------------------------------
def preload() -> None:
    """Import what the commands import (the CLI's lean diffusers import first)."""
    import quantface.cli  # sets HF_HUB_OFFLINE before anything reads it
    from quantface.lean_imports import import_diffusers_models

    import_diffusers_models()
    import pyiqa  # noqa: F401

    import quantface.api
    import quantface.cell
    import quantface.report.tables  # noqa: F401
    from quantface.registry import DATASETS, METHODS, METRICS, MODELS

    for registry in (METHODS, MODELS, METRICS, DATASETS):
        for name in registry:
            registry.get(name)


def _child(conn: socket.socket) -> None:
    """In the forked child: become the client's command, run it, report its exit code."""
    code = 1
    try:
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        request, fds = _recv(conn, 3)
        if request is None or len(fds) != 3:
            os._exit(1)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as importing quantface.cli does
        tempfile.tempdir = None  # TMPDIR is the client's
        logging.root.handlers.clear()  # the command configures its own (cli.main)
        sys.argv = ["quantface", *request["argv"]]
        _send(conn, {"pid": os.getpid()})

        def watch() -> None:  # the client gone (killed): stop as on SIGTERM
            with contextlib.suppress(OSError):
                while conn.recv(1):
                    pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="forkserver-client", daemon=True).start()
        from quantface.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except Exception:  # noqa: BLE001  # as an uncaught exception ends a process: exit 1
            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
        os._exit(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(path: str, watch_pid: int, load: Callable[[], None] = preload) -> None:
    """Preload, listen on `path`, fork a child per connection until `watch_pid` is gone, the
    socket file is removed, or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s forkserver: %(message)s")
    log = logging.getLogger("quantface.forkserver")
    load()
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(64)
    os.rename(staging, path)  # clients see the socket only once it accepts
    inode = os.stat(path).st_ino
    log.info("ready on %s (pid %d)", path, os.getpid())
    conns: dict[int, socket.socket] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            ready, _, _ = select.select([listener], [], [], _TICK_S)
            if ready:
                conn, _ = listener.accept()
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in conns.values():  # the other commands' connections
                        other.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    _child(conn)
                conns[pid] = conn
            _reap(conns)
            try:
                moved = os.stat(path).st_ino != inode
            except FileNotFoundError:
                moved = True
            if moved or not _alive(watch_pid):
                break
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        log.info("stopped")


def _reap(conns: dict[int, socket.socket]) -> None:
    """Collect finished children; a child that died by a signal gets its 128 + signal sent."""
    while conns:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = conns.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            with contextlib.suppress(OSError):
                _send(conn, {"exit": 128 + os.WTERMSIG(status)})
        conn.close()


# --- lifecycle (the Snakefile) -----------------------------------------------------------------
def start(log_path: str | Path) -> str | None:
    """Start a server for this process's jobs; its socket path (also put in the environment
    every later child process inherits), or None when $QUANTFACE_FORKSERVER turns it off."""
    import subprocess

    if os.environ.get(ENV, "").lower() in OFF:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="quantface-"), "fork.sock")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "quantface.forkserver", path, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the jobs through their clients only
        )
    os.environ[ENV] = path
    return path


def stop(path: str | None) -> None:
    """Stop the server on `path` (removing its socket is the signal) and its directory."""
    if not path:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


@contextlib.contextmanager
def running(log_path: str | Path) -> Iterator[str | None]:
    """A server for the duration of the block (tests, scripts)."""
    path = start(log_path)
    try:
        yield path
    finally:
        stop(path)
        os.environ.pop(ENV, None)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
