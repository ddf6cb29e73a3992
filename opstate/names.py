# SPDX-License-Identifier: MIT
"""Every name opstate shares with the outside world, in one place."""

from __future__ import annotations

from typing import Final

#: The three operations; only one of them may run at a time.
KINDS: Final[tuple[str, ...]] = ("backup", "restore", "upgrade")

DEFAULT_RUNTIME_DIR: Final = "/run/opstate"
RUNTIME_DIR_ENV: Final = "OPSTATE_RUNTIME_DIR"
#: Set for the children of an operation: ``<kind>:<holder pid>`` (like dpkg's DPKG_FRONTEND_LOCKED).
HELD_ENV: Final = "OPSTATE_HELD"
LOCK_NAME: Final = "operation.lock"
RECORD_NAME: Final = "holder.json"

#: sysexits.h EX_TEMPFAIL: another operation is in progress (``opstate run``'s default conflict exit code).
EX_TEMPFAIL: Final = 75

BUS_NAME: Final = "org.opstate.OpState1"
OBJECT_PATH: Final = "/org/opstate/OpState1"
INTERFACE: Final = "org.opstate.OpState1"
ERROR_PREFIX: Final = "org.opstate.OpState1.Error"
BUS_ENV: Final = "OPSTATE_BUS"
