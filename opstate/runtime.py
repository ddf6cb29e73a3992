# SPDX-License-Identifier: MIT
"""The runtime directory: where it is, creating it safely, and opening the lock file in it."""

from __future__ import annotations

import errno
import grp
import os
import stat
from pathlib import Path

from opstate.errors import RuntimeDirError
from opstate.names import DEFAULT_RUNTIME_DIR, LOCK_NAME, RUNTIME_DIR_ENV

__all__ = ["open_lock_file", "prepare", "resolve"]

DIR_MODE = 0o750
LOCK_MODE = 0o640


def resolve(runtime_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the runtime directory: the argument, else ``$OPSTATE_RUNTIME_DIR``, else /run/opstate."""
    return Path(runtime_dir or os.environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR)


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def prepare(directory: Path, group: str | int | None = None) -> None:
    """Create ``directory`` (0750) if needed and refuse it if others could tamper with it.

    ``group`` (a name or gid) owns the directory when we create it as root, so its members may read
    the state directly; the lock file stays unreadable to them (see :func:`open_lock_file`).
    """
    gid = None
    if group is not None:
        try:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        except KeyError:
            raise RuntimeDirError(f"unknown group {group!r} for {directory}; create it or leave --group out") from None
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create runtime directory {directory}: {exc.strerror}; "
                              "create it as root or choose another with --runtime-dir") from exc
    else:
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
        if gid is not None and os.geteuid() == 0:
            os.chown(directory, 0, gid)
    try:
        st = os.lstat(directory)
    except PermissionError as exc:
        raise RuntimeDirError(f"permission denied on {directory}: only root may start an operation") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {directory} is not a directory; remove it or choose another")
    if not _trusted_owner(st.st_uid):
        raise RuntimeDirError(f"refusing runtime directory {directory}: owned by uid {st.st_uid}, not root; "
                              f"chown root {directory}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeDirError(f"refusing runtime directory {directory}: mode {stat.S_IMODE(st.st_mode):04o} "
                              f"lets others write in it; chmod 0750 {directory}")


def open_lock_file(directory: Path) -> int:
    """Open (creating 0640 if needed) the lock file and return its descriptor.

    An flock needs only a read descriptor, so whoever can open this file can block every operation:
    it must never be readable by others. O_NOFOLLOW refuses a planted symlink, O_NONBLOCK keeps a FIFO
    from hanging us; the descriptor is close-on-exec so that children never hold the lock.
    """
    path = directory / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, LOCK_MODE)
    except PermissionError as exc:
        raise RuntimeDirError(f"permission denied opening {path}: only root may start an operation") from exc
    except OSError as exc:
        reason = "it is a symbolic link; remove it" if exc.errno == errno.ELOOP else exc.strerror
        raise RuntimeDirError(f"cannot open lock file {path}: {reason}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeDirError(f"lock file {path} is not a regular file; remove it")
        if not _trusted_owner(st.st_uid):
            raise RuntimeDirError(f"refusing lock file {path}: owned by uid {st.st_uid}; remove it")
        if stat.S_IMODE(st.st_mode) != LOCK_MODE:
            os.fchmod(fd, LOCK_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
