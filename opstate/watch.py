# SPDX-License-Identifier: MIT
"""A minimal inotify(7) watch on the runtime directory, so waiters sleep until something happens.

The kernel closes a holder's lock file on release and on death alike (even SIGKILL), and every close
of a descriptor opened for writing raises IN_CLOSE_WRITE: that is the wake-up for waiters and the
daemon, with no polling. Renaming the holder record into place raises IN_MOVED_TO.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
from pathlib import Path

__all__ = ["IN_CLOSE_WRITE", "IN_MOVED_TO", "IN_Q_OVERFLOW", "DirWatch"]

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class DirWatch:
    """Watch ``directory`` for ``mask`` events; :meth:`wait` sleeps until one arrives.

    ``fileno()`` lets an event loop watch the descriptor instead.
    """

    def __init__(self, directory: Path, mask: int) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")

    def fileno(self) -> int:
        """The inotify descriptor, readable when events are queued."""
        return int(self._fd)

    def read(self) -> list[tuple[int, str]]:
        """Drain the queued events and return them as ``(mask, name)`` pairs."""
        events: list[tuple[int, str]] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(buf):
                _wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                offset += _EVENT.size
                name = os.fsdecode(buf[offset : offset + length].rstrip(b"\0"))
                offset += length
                events.append((mask, name))

    def wait(self, timeout: float | None) -> list[tuple[int, str]]:
        """Sleep up to ``timeout`` seconds (None: forever) for events and return them."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        return self.read()

    def close(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
