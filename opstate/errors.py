# SPDX-License-Identifier: MIT
"""Typed errors of opstate; each one that may cross D-Bus names its D-Bus error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opstate.names import ERROR_PREFIX

if TYPE_CHECKING:
    from opstate.state import State

__all__ = ["Busy", "Error", "InvalidKind", "RuntimeDirError", "Unavailable"]


class Error(Exception):
    """Base class of every error opstate raises on purpose."""

    dbus_error_name = f"{ERROR_PREFIX}.Failed"


class InvalidKind(Error, ValueError):
    """An operation kind that is not one of backup, restore, upgrade."""

    dbus_error_name = f"{ERROR_PREFIX}.InvalidKind"

    def __init__(self, kind: str, valid: tuple[str, ...]) -> None:
        self.kind = kind
        super().__init__(f"unknown operation {kind!r}: valid operations are {', '.join(valid)}")


class Busy(Error):
    """Another operation holds the lock; ``holder`` is its state at the time of the conflict."""

    dbus_error_name = f"{ERROR_PREFIX}.Busy"

    def __init__(self, wanted: str, holder: State, note: str = "") -> None:
        self.wanted = wanted
        self.holder = holder
        message = f"cannot start {wanted}: {holder.describe()}"
        super().__init__(f"{message}; {note}" if note else message)


class RuntimeDirError(Error):
    """The runtime directory or a file in it is unsafe or unusable; nothing was changed."""

    dbus_error_name = f"{ERROR_PREFIX}.RuntimeDir"


class Unavailable(Error):
    """The daemon cannot be reached, so the state is unknown (never assume idle)."""

    dbus_error_name = f"{ERROR_PREFIX}.Unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"state unknown: {reason}")
