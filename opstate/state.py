# SPDX-License-Identifier: MIT
"""The state model, and :func:`probe`, which reads it from the kernel's own view of the lock."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opstate import proc, record, runtime
from opstate.errors import RuntimeDirError
from opstate.names import LOCK_NAME

__all__ = ["IDLE", "State", "format_duration", "probe"]


@dataclass(frozen=True)
class State:
    """Whether an operation is in progress and, if so, who holds it.

    ``operation`` is "" when idle, or when the lock is held but the holder has not (yet) published a
    record that matches it; ``since`` is seconds since the epoch (None when unknown).
    """

    in_progress: bool = False
    operation: str = ""
    pid: int = 0
    uid: int = 0
    since: float | None = None
    command: str = ""

    def describe(self, now: float | None = None, *, age: bool = True) -> str:
        """One line for people: ``idle`` or ``upgrade in progress (pid 4242 upgrade.sh, since …, 3m12s)``.

        ``age=False`` leaves out the running time, for text that is not re-rendered as time passes.
        """
        if not self.in_progress:
            return "idle"
        what = f"{self.operation} in progress" if self.operation else "an operation is in progress"
        who = f"pid {self.pid} {self.command}".rstrip()
        if self.since is None:
            return f"{what} ({who})"
        clock = datetime.fromtimestamp(self.since).strftime("%H:%M:%S")
        if not age:
            return f"{what} ({who}, since {clock})"
        running = format_duration((time.time() if now is None else now) - self.since)
        return f"{what} ({who}, since {clock}, {running})"

    def to_json(self) -> dict[str, Any]:
        """The stable camelCase form used by ``opstate status --json``."""
        since = None
        if self.since is not None:
            since = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="milliseconds")
        return {
            "inProgress": int(self.in_progress),
            "operation": self.operation,
            "pid": self.pid,
            "uid": self.uid,
            "since": since,
            "command": self.command,
        }


IDLE = State()


def format_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def probe(runtime_dir: str | os.PathLike[str] | None = None) -> State:
    """Read the state without taking the lock.

    The truth is whether the lock file's inode is flocked, and by which pid (/proc/locks). The holder
    record only labels that truth: it is used when its pid and start time match the live holder, so a
    stale record (a SIGKILLed holder), a forged one or one naming a reused pid never makes us say busy.
    """
    directory = runtime.resolve(runtime_dir)
    try:
        st = os.stat(directory / LOCK_NAME, follow_symlinks=False)
    except FileNotFoundError:
        return IDLE
    except PermissionError as exc:
        raise RuntimeDirError(f"permission denied reading {directory}: run as root, or ask the daemon "
                              "(opstate status without --direct)") from exc
    try:
        pid = proc.flock_holder(st)
    except OSError as exc:
        raise RuntimeDirError(f"cannot read /proc/locks: {exc.strerror}; is /proc mounted?") from exc
    if pid is None:
        return IDLE
    uid = proc.process_uid(pid) or 0
    rec = record.read(directory)
    if rec is not None and rec.pid == pid and rec.start_time == proc.start_time(pid):
        return State(True, rec.operation, pid, uid, rec.since, rec.command)
    return State(True, "", pid, uid, None, proc.command_name(pid))
