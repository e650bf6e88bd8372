"""A writer killed mid-write leaves no output and no debris once rerun."""

import subprocess
import sys
import textwrap


def _killed_writer(target, kind):
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from quantface.io import atomic_dir, atomic_path
        target = Path({str(target)!r})
        if {kind!r} == "file":
            with atomic_path(target) as tmp:
                tmp.write_text("half of the")
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            with atomic_dir(target) as tmp:
                (tmp / "a.png").write_text("first image")
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False)
    assert r.returncode == -9


def test_sigkilled_file_write_leaves_nothing_and_rerun_cleans_up(tmp_path):
    from quantface.io import atomic_write_text

    target = tmp_path / "metrics.csv"
    _killed_writer(target, "file")
    assert not target.exists()
    atomic_write_text(target, "complete")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_sigkilled_folder_write_keeps_the_old_folder(tmp_path):
    from quantface.io import atomic_dir

    target = tmp_path / "images"
    target.mkdir()
    (target / "old.png").write_text("finished earlier")
    _killed_writer(target, "dir")
    assert [p.name for p in target.iterdir()] == ["old.png"]
    with atomic_dir(target) as tmp:
        (tmp / "new.png").write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["images"]
    assert [p.name for p in target.iterdir()] == ["new.png"]
