# SPDX-License-Identifier: MIT
"""Users file, sessions and login throttling, without a server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from opstate.auth import LoginThrottle, Sessions, Users
from opstate.errors import Error


def test_parallel_attempts_cannot_slip_past_the_limit() -> None:
    throttle = LoginThrottle(limit=5, window=60)
    allowed: list[bool] = []
    threads = [threading.Thread(target=lambda: allowed.append(throttle.attempt("10.0.0.1"))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert allowed.count(True) == 5
    assert throttle.attempt("10.0.0.2"), "another address is not affected"


def test_good_logins_are_not_counted() -> None:
    throttle = LoginThrottle(limit=2, window=60)
    for _ in range(10):
        assert throttle.attempt("a")
        throttle.succeeded("a")


def test_sessions_expire_when_idle() -> None:
    sessions = Sessions(idle_timeout=0.0)
    sid = sessions.create("demo")
    assert sessions.touch(sid) is None
    assert Sessions(60).touch("forged") is None


def test_stale_temp_file_with_loose_permissions_is_not_reused(tmp_path: Path) -> None:
    users = Users(tmp_path / "users")
    stale = tmp_path / ".users.tmp"
    stale.write_text("junk")
    stale.chmod(0o666)
    users.set_password("alice", "pw")
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o600
    assert not stale.exists()


def test_unwritable_users_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Error, match="cannot write users file"):
        Users(tmp_path / "missing-dir" / "users").set_password("alice", "pw")
