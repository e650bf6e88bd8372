"""A folder of outputs that may already hold a user's files: the suite writes only its own.

`atomic_dir` (quantface.io) replaces a whole folder the suite wrote; this is for the other case,
a user's `--output` folder, where replacing the whole would destroy what they keep there. The
rule: a file the suite did not write is never deleted or replaced. The names the suite claims
are recorded in the folder's `.quantface-files` *before* any is written, so the finished
outputs of a killed run are still known as the suite's own (and a rerun may replace them),
while every other file stays untouched. Each output is written atomically (temp, then rename).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from quantface.errors import OutputError
from quantface.io import (
    OWNED,
    atomic_write_text,
    check_output_folder,
    foreign_entries,
    make_parents,
    owned_names,
    remove_if_empty,
    write_image,
    write_owned,
)


def check_writable(path: Path, overwrite: bool) -> list[str]:
    """The folder's foreign entries, after refusing it when it holds any and `overwrite` is off:
    callable before the work that decides the output names (a whole-photo run's face count)."""
    check_output_folder(path)
    foreign = foreign_entries(path)
    if foreign and not overwrite:
        raise OutputError(
            f"output folder {path} already holds {len(foreign)} entries quantface did "
            f"not write (e.g. {foreign[0]}); give a new or empty folder, or pass --overwrite "
            "to write the outputs beside them (they are never replaced)"
        )
    return foreign


class OutputFolder:
    """Claim `names` in `path` (refusing any clash with a user's file), then write them."""

    def __init__(
        self,
        path: str | Path,
        names: Iterable[str],
        overwrite: bool = False,
        records: Iterable[str] = (),
    ) -> None:
        """`records` are claimed names that only describe the others (a manifest): a failed run
        that finished none of the others removes them too."""
        self.path = Path(path)
        self.records = set(records)
        names = set(names) | self.records
        foreign = check_writable(self.path, overwrite)
        taken = {f.casefold(): f for f in foreign}  # case-insensitive filesystems collide too
        clash = sorted(taken[n.casefold()] for n in names if n.casefold() in taken)
        if clash:
            raise OutputError(
                f"output folder {self.path} holds {clash[0]}, which quantface did not write and "
                f"an output would replace ({len(clash)} such files); move them or choose "
                "another folder"
            )
        self.created = make_parents(self.path)
        self.names = names
        write_owned(self.path, (owned_names(self.path) or set()) | names)

    def write_image(self, name: str, arr: np.ndarray) -> None:
        self._check_claimed(name)
        write_image(self.path / name, arr)

    def write_json(self, name: str, value: Any) -> None:
        self._check_claimed(name)
        atomic_write_text(self.path / name, json.dumps(value, indent=1))

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON output of an earlier run into this folder, or None."""
        try:
            value = json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def abort(self) -> None:
        """After a failure: keep finished outputs; if none exists, leave no record, no folder."""
        if any(self.exists(n) for n in self.names - self.records):
            return
        for n in self.records:
            (self.path / n).unlink(missing_ok=True)
        earlier = {n for n in (owned_names(self.path) or set()) - self.names if self.exists(n)}
        if earlier:
            write_owned(self.path, earlier)
        else:
            (self.path / OWNED).unlink(missing_ok=True)
        remove_if_empty(self.created)

    def _check_claimed(self, name: str) -> None:
        assert name in self.names, f"{name} was written to {self.path} without being claimed"
