# SPDX-License-Identifier: MIT
"""Readers' side: ask the daemon once (:func:`get_state`) or follow it (:class:`StateWatcher`).

A reader that cannot reach the daemon gets :class:`opstate.Unavailable`, never an idle state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from opstate import bus
from opstate.errors import Unavailable
from opstate.names import BUS_ENV
from opstate.state import State

__all__ = ["StateWatcher", "bus_spec", "get_state"]


def bus_spec(spec: str | None = None) -> str:
    """The bus to use: the argument, else ``$OPSTATE_BUS``, else ``system``."""
    return spec or os.environ.get(BUS_ENV) or "system"


def get_state(spec: str | None = None) -> State:
    """Return the daemon's current state in one call; raise :class:`Unavailable` if it does not answer."""
    spec = bus_spec(spec)
    connection = bus.connect(spec)
    try:
        return bus.read_state(connection, spec)
    finally:
        bus.disconnect(connection, spec)


class StateWatcher:
    """Follows the daemon's state from a background thread; cheap to read from any thread.

    ``current`` is None while the daemon is unreachable (unknown is not idle). It follows
    PropertiesChanged and the name's owner, and re-reads the whole state whenever the daemon returns.
    """

    def __init__(self, spec: str | None = None, on_change: Callable[[State | None], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._state: State | None = None
        self._seen = False
        self._on_change = on_change
        self._subscription = bus.subscribe(bus_spec(spec), self._update)

    def _update(self, state: State | None) -> None:
        with self._cond:
            changed = not self._seen or state != self._state
            self._state, self._seen = state, True
            self._cond.notify_all()
        if changed and self._on_change is not None:
            self._on_change(state)

    @property
    def current(self) -> State | None:
        """The latest state, or None if unknown."""
        with self._cond:
            return self._state

    def get(self) -> State:
        """The latest state; raise :class:`Unavailable` if it is unknown."""
        state = self.current
        if state is None:
            raise Unavailable("the opstate daemon is not running or not reachable")
        return state

    def wait_for(self, predicate: Callable[[State | None], bool], timeout: float | None = None) -> State | None:
        """Block until ``predicate(current)`` holds (first report included); return that state.

        Raise TimeoutError after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._seen and predicate(self._state)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"still {self._state.describe() if self._state else 'unknown'}")
                self._cond.wait(remaining)
            return self._state

    def close(self) -> None:
        """Stop following."""
        self._subscription.close()

    def __enter__(self) -> StateWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
