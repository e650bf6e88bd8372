"""One exception type per user-facing failure kind.

`cli.py` catches `QuantFaceError`, prints its message as one line and exits with code 2, so a
user sees which key/file is wrong and how to fix it instead of a traceback deep in torch.
"""


class QuantFaceError(Exception):
    """Base class: a problem the user can fix (bad config, missing file, bad data)."""


class ConfigError(QuantFaceError):
    """A config key, value or name is invalid."""


class DataError(QuantFaceError):
    """An image or dataset folder is missing, unreadable or inconsistent."""


class CheckpointError(QuantFaceError):
    """A model file is missing, truncated, of another version or architecture."""


class WeightsMissingError(QuantFaceError):
    """A pretrained weight file the user must provide is absent."""


class NumericsError(QuantFaceError):
    """Calibration produced NaN/Inf; nothing is written."""


def first_line(e: BaseException) -> str:
    """`Type: first sentence` of a third-party exception, for the one-line error convention."""
    text = str(e).strip()
    return (
        f"{type(e).__name__}: {text.splitlines()[0].split('. ')[0]}" if text else type(e).__name__
    )


class OutputError(QuantFaceError):
    """An output path would destroy data the suite did not write (or is not writable as asked)."""


class DiskFullError(QuantFaceError):
    """A write failed because the filesystem is full; finished outputs were kept."""


class DeviceError(QuantFaceError):
    """The requested compute device is misnamed or not present on this machine."""
