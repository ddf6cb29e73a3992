# SPDX-License-Identifier: MIT
"""The holder record: who holds the lock, written atomically by the holder while it holds it.

The record is only a label on the kernel lock. Readers trust it only when its pid and start time
match the process that /proc/locks says holds the lock (see :mod:`opstate.state`).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from opstate.errors import RuntimeDirError
from opstate.names import KINDS, RECORD_NAME

__all__ = ["Record", "read", "remove", "write"]


@dataclass(frozen=True)
class Record:
    """One holder: operation, pid, its start time (ticks since boot), uid, epoch start and command."""

    operation: str
    pid: int
    start_time: int
    uid: int
    since: float
    command: str


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "operation": str, "pid": int, "start_time": int, "uid": int, "since": (int, float), "command": str,
}


def write(directory: Path, record: Record) -> None:
    """Publish ``record`` atomically (temp file, fsync, rename, fsync of the directory)."""
    path = directory / RECORD_NAME
    tmp = directory / f".{RECORD_NAME}.{record.pid}.tmp"
    data = json.dumps(asdict(record)).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if os.geteuid() == 0:  # the runtime directory's group may read the record (not the lock)
                os.fchown(fd, -1, os.stat(directory).st_gid)
            if os.write(fd, data) != len(data):  # a short write of a few hundred bytes means a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeDirError(f"cannot write holder record {path}: {exc.strerror or exc}; "
                              "free space in the runtime directory or make it writable") from exc


def read(directory: Path) -> Record | None:
    """Return the record, or None if it is missing, unreadable or malformed."""
    try:
        raw = json.loads((directory / RECORD_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or set(raw) != set(_FIELDS):
        return None
    if any(isinstance(raw[k], bool) or not isinstance(raw[k], t) for k, t in _FIELDS.items()):
        return None
    if raw["operation"] not in KINDS:
        return None
    return Record(**raw)


def remove(directory: Path) -> None:
    """Delete the record; the holder calls this before it releases the lock."""
    (directory / RECORD_NAME).unlink(missing_ok=True)
