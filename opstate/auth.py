# SPDX-License-Identifier: MIT
"""REST users and sessions: salted scrypt hashes in a users file, idle-timed sessions, login throttling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from opstate.errors import Error

__all__ = ["LoginThrottle", "Sessions", "Users", "hash_password"]

# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB here: slow for a guesser, fine for a login.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None, n: int = _N, r: int = _R, p: int = _P) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` (base64) for ``password``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def _verify(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, _digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = hash_password(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), stored.encode())


class Users:
    """The users file: one ``name:scrypt$…`` line per user. There is no built-in user or password."""

    _DUMMY = hash_password("opstate-dummy-password")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, str] = {}
        try:
            text = path.read_text() if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise Error(f"cannot read users file {path}: {exc}") from exc
        for line in text.splitlines():
            name, sep, stored = line.partition(":")
            if sep and name and not line.startswith("#"):
                self._hashes[name] = stored

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s; as slow for unknown users as for known ones."""
        stored = self._hashes.get(name)
        ok = _verify(password, stored or self._DUMMY)
        return ok and stored is not None

    def set_password(self, name: str, password: str) -> None:
        """Add or replace ``name`` and rewrite the file (0600) atomically."""
        if not name or ":" in name or any(c.isspace() for c in name):
            raise ValueError(f"invalid user name {name!r}: no colon or white space")
        if not password:
            raise ValueError("empty password")
        self._hashes[name] = hash_password(password)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.unlink(missing_ok=True)  # a leftover could have looser permissions than ours
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{n}:{h}\n" for n, h in sorted(self._hashes.items()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Error(f"cannot write users file {self.path}: {exc.strerror or exc}") from exc


class Sessions:
    """Session ids (``connect.sid``) that expire after ``idle_timeout`` seconds without a request."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._last_seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> str:
        """Start a session for ``user``; return its id."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(time.monotonic())
            self._last_seen[sid] = (user, time.monotonic())
        return sid

    def touch(self, sid: str | None) -> str | None:
        """Return the session's user and renew it, or None if it is unknown or expired."""
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            entry = self._last_seen.get(sid)
            if entry is None:
                return None
            if now - entry[1] > self.idle_timeout:
                del self._last_seen[sid]
                return None
            self._last_seen[sid] = (entry[0], now)
            return entry[0]

    def end(self, sid: str | None) -> None:
        """Log the session out."""
        with self._lock:
            self._last_seen.pop(sid or "", None)

    def _expire(self, now: float) -> None:
        stale = [s for s, (_, seen) in self._last_seen.items() if now - seen > self.idle_timeout]
        for sid in stale:
            del self._last_seen[sid]


class LoginThrottle:
    """At most ``limit`` failed logins per client address within ``window`` seconds."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        for stale in [a for a, f in self._failures.items() if not f or now - f[-1] > self.window]:
            del self._failures[stale]
        failures = self._failures.setdefault(address, deque())
        while failures and now - failures[0] > self.window:
            failures.popleft()
        return failures

    def attempt(self, address: str) -> bool:
        """Count a login attempt from ``address`` as failed until :meth:`succeeded`; False if over the limit.

        Counting before the (slow) password check keeps parallel attempts from slipping past the limit.
        """
        with self._lock:
            now = time.monotonic()
            failures = self._recent(address, now)
            if len(failures) >= self.limit:
                return False
            failures.append(now)
            return True

    def succeeded(self, address: str) -> None:
        """The attempt from ``address`` was a good login: do not count it."""
        with self._lock:
            failures = self._failures.get(address)
            if failures:
                failures.pop()
