# SPDX-License-Identifier: MIT
"""Shared fixtures: a private runtime directory, the opstate command, bounded waits."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from services import Daemon, PrivateBus

HOLDER = """
import sys, time, opstate
with opstate.operation(sys.argv[1], runtime_dir=sys.argv[2], wait=None):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A temp folder that unprivileged users may traverse (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="opstate-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime_dir(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runtime directory (not yet created), also exported as $OPSTATE_RUNTIME_DIR."""
    path = base_dir / "run"
    monkeypatch.setenv("OPSTATE_RUNTIME_DIR", str(path))
    monkeypatch.delenv("OPSTATE_HELD", raising=False)
    return path


def opstate(*args: str) -> list[str]:
    """The argv of the opstate command, run with this interpreter."""
    return [sys.executable, "-m", "opstate", *args]


class Procs:
    """Processes started by a test; all are killed at its end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def holder(self, kind: str, runtime_dir: Path, seconds: float = 30) -> subprocess.Popen[str]:
        """A library holder of ``kind``; returns once it holds the lock."""
        proc = self.start([sys.executable, "-c", HOLDER, kind, str(runtime_dir), str(seconds)])
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.kill_all()


@pytest.fixture
def bus(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A private session-like dbus-daemon, also exported as $OPSTATE_BUS."""
    private = PrivateBus(base_dir / "bus")
    monkeypatch.setenv("OPSTATE_BUS", private.address)
    yield private
    private.stop()


@pytest.fixture
def daemon(bus: PrivateBus, runtime_dir: Path, base_dir: Path) -> Iterator[Daemon]:
    """opstated on the private bus, ready."""
    d = Daemon(bus, runtime_dir, base_dir).start()
    yield d
    d.stop()
