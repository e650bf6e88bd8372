"""The memory guard: a job about to exhaust host memory stops with the one-line out-of-memory
error (and its temp files cleaned up) instead of the kernel's silent SIGKILL."""

import re
import time

import pytest

from quantface import memory
from quantface.cli import main


def test_headroom_is_read_on_linux():
    room = memory.headroom_mb()
    assert room is not None and room[0] > 0 and room[1] > 0
    assert memory.resident_mb() > 10  # this interpreter with pandas/torch loaded
    assert 512 <= memory.default_reserve_mb() <= 4096


def test_guard_raises_memory_error_in_the_main_thread_when_memory_runs_short(monkeypatch):
    monkeypatch.setattr(memory, "SHARE", 0.0)  # whatever else runs on the machine
    with pytest.raises(MemoryError), memory.memory_guard("x", reserve_mb=1e12):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)


def test_guard_stays_quiet_with_room_to_spare(monkeypatch):
    monkeypatch.setattr(memory, "SHARE", 0.0)
    with memory.memory_guard("x", reserve_mb=0.0):
        time.sleep(3 * memory.POLL_S)


def test_a_command_short_of_memory_exits_1_with_the_stage_in_one_line(
    monkeypatch, capsys, tmp_path
):
    import quantface.restore

    def grow(*args, **kwargs):  # stands in for a restoration whose memory keeps growing
        memory.enter_stage("restore")
        time.sleep(10)

    monkeypatch.setattr(quantface.restore, "restore_folder", grow)
    monkeypatch.setattr(memory, "SHARE", 0.0)
    monkeypatch.setenv(memory.RESERVE_ENV, str(10**12))
    out = tmp_path / "o"
    t0 = time.monotonic()
    rc = main(["restore", "--model", "m", "--input", "i", "--output", str(out), "--device", "cpu"])
    assert rc == 1 and time.monotonic() - t0 < 5
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"quantface restore: error: out of memory in stage 'restore' \(peak RSS", line)
    assert not out.exists()
