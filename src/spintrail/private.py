"""Private files: everything spintrail writes (the database with its WAL and shared-memory files, key
files, backups, exports, proofs, checkpoint files) is readable by its owner only, whatever the umask.

The database holds the redaction key and every event, so a file readable by other local users leaks both.
``serve`` and every other command start by setting the umask to 0077 (``restrict_umask``), and the places
that create files create them 0600 (directories 0700) themselves, so library use is covered too. SQLite
gives a database's ``-wal``, ``-shm`` and journal files the mode of the database file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700
UMASK = 0o077


def restrict_umask() -> int:
    """Make files this process creates from now on private; returns the previous umask."""
    return os.umask(UMASK)


def create_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; returns whether it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    finally:
        os.close(fd)
    return True


def make_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and missing parents with mode 0700 (existing directories are left as they are)."""
    missing: list[Path] = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask


def open_file(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``wb``, ``x``, ``a``...), creating the file with mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT
    if "x" in mode:
        flags |= os.O_EXCL
    elif "a" in mode:
        flags |= os.O_APPEND
    else:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``Path.write_text`` with mode 0600."""
    with open_file(path, "w", encoding="utf-8") as fp:
        fp.write(text)
