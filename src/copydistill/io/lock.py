"""One writer per output folder: an exclusive lock file (``filelock``) that names its holder.

A second writer waits (saying who holds the folder) and goes on once the first has finished.
The lock is the kernel's (``flock``): it goes away with its process, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from copydistill.errors import CopydistillError

LOCK_FILE = ".copydistill.lock"


def _holder_text() -> str:
    command = " ".join(["copydistill", *sys.argv[1:]])[:200]
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} ({command})"


def lock_holder(folder: Path) -> str:
    """Who holds (or last held) ``folder``'s lock, as written by the holder."""
    try:
        return (Path(folder) / LOCK_FILE).read_text().strip() or "another copydistill run"
    except OSError:
        return "another copydistill run"


@contextlib.contextmanager
def folder_lock(folder: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s writer lock for the block; wait (with a note on stderr) if it is taken."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    lock = FileLock(path, is_singleton=False, thread_local=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"copydistill: waiting: {folder} is being written by {lock_holder(folder)}; "
                  "this run goes on when that one ends (Ctrl-C to stop)", file=sys.stderr, flush=True)
            lock.acquire(timeout=-1)
        with open(path, "w") as handle:  # same inode: the lock stays; waiters can name us
            handle.write(_holder_text() + "\n")
    except OSError as err:
        if lock.is_locked:
            lock.release()
        raise CopydistillError(
            f"cannot create the folder {folder} or its lock file ({err.strerror or err}); "
            f"choose a writable {option}"
        ) from err
    try:
        yield
    finally:
        lock.release()
