# SPDX-License-Identifier: MIT
"""The operation lock: ``with opstate.operation("upgrade"): ...``.

An exclusive flock (filelock's native primitive on our own descriptor, never a soft lock) on
``<runtime_dir>/operation.lock`` guards every operation. The kernel drops it when the holder dies,
however it dies, so nothing can stay "in progress" after a crash.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import lock_descriptor, unlock_descriptor

from opstate import proc, record, runtime
from opstate.errors import Busy, InvalidKind, RuntimeDirError
from opstate.names import HELD_ENV, KINDS, LOCK_NAME
from opstate.state import State, probe
from opstate.watch import IN_CLOSE_WRITE, DirWatch

__all__ = ["WaitCallback", "check_kind", "held_by_ancestor", "operation"]

#: Called now and then while waiting, with the state we wait for and the seconds waited so far.
WaitCallback = Callable[[State, float], None]

PROGRESS_INTERVAL = 5.0
# Waiters wake on inotify events; this only bounds how long an unforeseen missed event could delay us.
_SAFETY_WAKE = 1.0


def check_kind(kind: str) -> str:
    """Return ``kind`` if it names an operation, else raise :class:`InvalidKind`."""
    if kind not in KINDS:
        raise InvalidKind(kind, KINDS)
    return kind


def _try_lock(fd: int) -> bool:
    try:
        return lock_descriptor(fd, blocking=False)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise RuntimeDirError("the runtime directory's filesystem does not support flock; a soft lock "
                                  "would not be released on a crash, so opstate refuses it: use a tmpfs "
                                  "such as /run") from exc
        raise


class _WatchPool:
    """Idle inotify watches kept for reuse, per directory.

    Closing an inotify descriptor waits for an RCU grace period (milliseconds), which would land on
    the hand-off path; so a waiter takes a watch from here and gives it back instead of closing it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Path, list[DirWatch]] = {}
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # A child must not share its parent's inotify queues; closing its copies is cheap.
        for watches in self._idle.values():
            for watch in watches:
                watch.close()
        self._idle = {}
        self._lock = threading.Lock()

    @contextmanager
    def take(self, directory: Path) -> Iterator[DirWatch]:
        """Lend a watch on ``directory`` with its stale events drained."""
        with self._lock:
            idle = self._idle.setdefault(directory, [])
            watch = idle.pop() if idle else None
        if watch is None:
            watch = DirWatch(directory, IN_CLOSE_WRITE)
        else:
            watch.read()
        try:
            yield watch
        finally:
            with self._lock:
                self._idle.setdefault(directory, []).append(watch)


_watches = _WatchPool()


def _same_inode(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(directory: Path, kind: str, wait: float | None, on_wait: WaitCallback | None) -> int:
    """Return a descriptor holding the lock, or raise Busy once ``wait`` seconds have passed."""
    while True:
        fd = _lock(directory, kind, wait, on_wait)
        if _same_inode(fd, directory / LOCK_NAME):
            return fd
        # The file was replaced under us: a lock on the old inode excludes nobody; start over.
        unlock_descriptor(fd)
        os.close(fd)


def _lock(directory: Path, kind: str, wait: float | None, on_wait: WaitCallback | None) -> int:
    fd = runtime.open_lock_file(directory)
    try:
        if _try_lock(fd):
            return fd
        if wait == 0:
            raise Busy(kind, probe(directory))
        start = time.monotonic()
        deadline = None if wait is None else start + wait
        next_report = start + PROGRESS_INTERVAL if on_wait else float("inf")
        # Watch first, then retry: a release between our first try and the watch is not lost.
        with _watches.take(directory) as watch:
            while not _try_lock(fd):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise Busy(kind, probe(directory))
                if on_wait is not None and now >= next_report:
                    on_wait(probe(directory), now - start)
                    next_report = now + PROGRESS_INTERVAL
                watch.wait(min(_SAFETY_WAKE, next_report - now, float("inf") if deadline is None else deadline - now))
        return fd
    except BaseException:
        os.close(fd)
        raise


# How deep this thread is inside operation() blocks it holds itself.
_depth = threading.local()


def held_by_ancestor(directory: Path) -> State | None:
    """Return the state if our environment names an operation that an ancestor process really holds,
    or that this very thread holds (a nested ``with``).

    Another thread of the holding process does not join: it takes the lock like anyone else, since it
    may outlive the holder's block.
    """
    value = os.environ.get(HELD_ENV, "")
    kind, _, pid_text = value.partition(":")
    if not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid() and not getattr(_depth, "value", 0):
        return None
    current = probe(directory)
    if current.pid != pid or current.operation != kind:
        return None
    return current if pid in proc.ancestors(os.getpid()) else None


@contextmanager
def operation(
    kind: str,
    *,
    wait: float | None = 0,
    runtime_dir: str | os.PathLike[str] | None = None,
    command: str | None = None,
    on_wait: WaitCallback | None = None,
    group: str | int | None = None,
) -> Iterator[State]:
    """Hold the operation lock for ``kind`` (backup, restore or upgrade) inside the ``with`` block.

    ``wait=0`` fails at once with :class:`Busy`, ``wait=N`` waits up to N seconds, ``wait=None``
    forever. Yields the state as published. Children started inside the block find ``$OPSTATE_HELD``;
    a nested ``operation()`` of the same kind joins the held one (it neither locks nor releases), one
    of another kind raises :class:`Busy` at once, since waiting for our own ancestor would deadlock.
    """
    check_kind(kind)
    if wait is not None and wait < 0:
        raise ValueError(f"wait must be None or >= 0 seconds, not {wait}")
    directory = runtime.resolve(runtime_dir)
    runtime.prepare(directory, group)
    held = held_by_ancestor(directory)
    if held is not None:
        if held.operation != kind:
            raise Busy(kind, held, f"this process runs inside it (${HELD_ENV}); nested operations must be "
                                   f"of the same kind")
        _depth.value = getattr(_depth, "value", 0) + 1
        try:
            yield held
        finally:
            _depth.value -= 1
        return
    fd = _acquire(directory, kind, wait, on_wait)
    try:
        pid = os.getpid()
        rec = record.Record(kind, pid, proc.start_time(pid) or 0, os.getuid(), time.time(),
                            command or proc.command_name(pid))
        record.write(directory, rec)
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = f"{kind}:{pid}"
        _depth.value = getattr(_depth, "value", 0) + 1
        try:
            yield State(True, kind, pid, rec.uid, rec.since, rec.command)
        finally:
            _depth.value -= 1
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            # The record goes first: once the lock is free a new holder may write its own.
            with suppress(OSError):
                record.remove(directory)
    finally:
        unlock_descriptor(fd)
        os.close(fd)
