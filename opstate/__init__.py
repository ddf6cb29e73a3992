# SPDX-License-Identifier: MIT
"""opstate: one backup, restore or upgrade at a time, and a true answer to "is one in progress?"."""

from __future__ import annotations

from opstate.errors import Busy, Error, InvalidKind, RuntimeDirError, Unavailable
from opstate.lock import operation
from opstate.names import KINDS
from opstate.state import State, probe

__all__ = ["KINDS", "Busy", "Error", "InvalidKind", "RuntimeDirError", "State", "Unavailable", "operation", "probe"]
