"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash or Ctrl-C during a write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from copydistill.errors import CopydistillError

_UMASK = os.umask(0)  # read once at import (single-threaded); os.umask has no read-only form
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file: results are not owner-only


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES,
                 errno.EPERM}


def _write_error(path: Path, err: OSError) -> CopydistillError:
    hint = ("free some space or choose another output location" if err.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose a writable output location")
    return CopydistillError(f"cannot write {path}: {err.strerror or err}; {hint} (nothing partial was kept)")


def ensure_dir(path: str | Path, option: str = "--out") -> Path:
    """``mkdir -p path``, or a one-line error naming it and the option to change."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CopydistillError(f"{option} {path}: is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CopydistillError(
            f"cannot create the folder {path}: {err.strerror or err}; choose a writable {option}"
        ) from err
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CopydistillError(
            f"cannot write {path}: {err.strerror or err}. Choose a writable output location."
        ) from err
    os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would make every result owner-only
    handle = os.fdopen(fd, mode)
    try:
        try:
            yield handle
        except OSError as err:
            if err.errno not in _WRITE_ERRORS:
                raise  # the caller's own error (e.g. reading its input), not this write
            raise _write_error(path, err) from err
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, path)
        except OSError as err:
            raise _write_error(path, err) from err
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            handle.close()  # may fail again flushing what did not fit: ignored, the file goes
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # no partial file is left behind
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)
