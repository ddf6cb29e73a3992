# SPDX-License-Identifier: MIT
"""The daemon's decisions, in plain Python: derive the published state from the lock, on events.

The state is never stored on its own: every refresh is a fresh :func:`opstate.probe`. inotify on the
runtime directory tells us when to refresh: the holder renames its record into place right after it
takes the lock (IN_MOVED_TO), and the kernel closes the lock file when the holder releases it or dies,
SIGKILL included (IN_CLOSE_WRITE). No polling; :meth:`Monitor.reconcile` is only a safety net.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from opstate import record
from opstate.names import LOCK_NAME, RECORD_NAME
from opstate.state import State, format_duration, probe
from opstate.watch import IN_CLOSE_WRITE, IN_MOVED_TO, IN_Q_OVERFLOW, DirWatch

__all__ = ["Change", "Finished", "Monitor", "Started"]

log = logging.getLogger(__name__)

_IN_IGNORED = 0x00008000  # the watch is gone: the runtime directory was removed
_RELEVANT = {LOCK_NAME, RECORD_NAME}


@dataclass(frozen=True)
class Started:
    """An operation was seen to start."""

    operation: str
    pid: int


@dataclass(frozen=True)
class Finished:
    """An operation ended; ``how`` is "released" or "holder-died"."""

    operation: str
    pid: int
    how: str


@dataclass(frozen=True)
class Change:
    """One transition of the published state, with the signals it implies."""

    old: State
    new: State
    events: list[Started | Finished]


class RuntimeDirGone(Exception):
    """The runtime directory disappeared under the daemon; it must restart to watch the new one."""


class Monitor:
    """Owns the published state of one runtime directory."""

    def __init__(self, runtime_dir: Path) -> None:
        self.directory = runtime_dir
        self._watch = DirWatch(runtime_dir, IN_CLOSE_WRITE | IN_MOVED_TO)
        self.state = probe(runtime_dir)  # after the watch exists, so no change between is missed

    def fileno(self) -> int:
        """Readable when something happened in the runtime directory."""
        return self._watch.fileno()

    def on_events(self) -> Change | None:
        """Handle what inotify reports; return the change to publish, if any."""
        events = self._watch.read()
        if any(mask & _IN_IGNORED for mask, _ in events):
            raise RuntimeDirGone(f"runtime directory {self.directory} was removed")
        if any(name in _RELEVANT or mask & IN_Q_OVERFLOW for mask, name in events):
            return self.refresh()
        return None

    def refresh(self, new: State | None = None) -> Change | None:
        """Probe the lock (unless ``new`` is a fresh probe already) and return the change, if the state
        differs from what we publish."""
        new = probe(self.directory) if new is None else new
        old = self.state
        if new == old:
            return None
        self.state = new
        events: list[Started | Finished] = []
        if old.in_progress and new.pid != old.pid:
            events.append(Finished(old.operation, old.pid, self._how_it_ended(old)))
        if new.in_progress and new.pid != old.pid:
            events.append(Started(new.operation, new.pid))
        change = Change(old, new, events)
        _log_change(change)
        return change

    def reconcile(self) -> Change | None:
        """Compare the published state with the lock when no event is pending; a difference means an
        event was lost, which must never happen, so it is logged as an error and corrected."""
        change = self.on_events()
        if change is not None:
            return change
        current = probe(self.directory)
        if current != self.state:
            log.error("published state was wrong (%s); an event was missed, correcting", self.state.describe())
            return self.refresh(current)
        return None

    def _how_it_ended(self, old: State) -> str:
        # A holder removes its record before it unlocks; a record still naming it means it died holding.
        left = record.read(self.directory)
        return "holder-died" if left is not None and left.pid == old.pid and left.since == old.since else "released"

    def close(self) -> None:
        """Stop watching."""
        self._watch.close()


def _log_change(change: Change) -> None:
    for event in change.events:
        if isinstance(event, Finished):
            what = event.operation or "operation"
            took = "" if change.old.since is None else f" after {format_duration(time.time() - change.old.since)}"
            if event.how == "holder-died":
                log.warning("%s finished: holder pid %d died%s; the kernel released its lock", what, event.pid, took)
            else:
                log.info("%s finished: released by pid %d%s", what, event.pid, took)
        else:
            log.info("%s started by pid %d (%s, uid %d)", event.operation or "an operation", event.pid,
                     change.new.command, change.new.uid)
    if not change.events:
        log.info("now: %s", change.new.describe())
