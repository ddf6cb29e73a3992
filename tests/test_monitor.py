# SPDX-License-Identifier: MIT
"""The daemon's decisions without a bus, and the D-Bus error glue on a private bus."""

from __future__ import annotations

import logging
import select
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Procs
from services import PrivateBus

import opstate
from opstate import bus as glue
from opstate import runtime
from opstate.monitor import Finished, Monitor, Started


@pytest.fixture
def monitor(runtime_dir: Path) -> Iterator[Monitor]:
    runtime.prepare(runtime_dir)
    m = Monitor(runtime_dir)
    yield m
    m.close()


def next_change(monitor: Monitor, timeout: float = 2.0) -> opstate.State:
    """Wait for inotify events until the monitor reports a change; return the new state."""
    while True:
        ready, _, _ = select.select([monitor], [], [], timeout)
        assert ready, f"no change within {timeout}s"
        change = monitor.on_events()
        if change is not None:
            return change.new


def test_start_release_and_death_become_changes_and_events(monitor: Monitor, runtime_dir: Path,
                                                          procs: Procs) -> None:
    assert monitor.state == opstate.State()
    holder = procs.holder("backup", runtime_dir, seconds=0.2)
    state = next_change(monitor)
    assert (state.in_progress, state.operation, state.pid) == (True, "backup", holder.pid)
    holder.wait(timeout=5)
    assert next_change(monitor) == opstate.State()
    victim = procs.holder("upgrade", runtime_dir)
    next_change(monitor)
    victim.kill()
    victim.wait(timeout=5)
    _ready, _, _ = select.select([monitor], [], [], 2)
    change = monitor.on_events()
    assert change is not None
    assert change.events == [Finished("upgrade", victim.pid, "holder-died")]


def test_events_name_the_old_and_new_holder(monitor: Monitor, runtime_dir: Path) -> None:
    with opstate.operation("restore", runtime_dir=runtime_dir) as held:
        change = monitor.refresh()
        assert change is not None and change.events == [Started("restore", held.pid)]
    change = monitor.refresh()
    assert change is not None and change.events == [Finished("restore", held.pid, "released")]
    assert monitor.refresh() is None


def test_restart_derives_a_running_operation(runtime_dir: Path, procs: Procs) -> None:
    holder = procs.holder("upgrade", runtime_dir)
    fresh = Monitor(runtime_dir)
    try:
        assert (fresh.state.in_progress, fresh.state.operation, fresh.state.pid) == (True, "upgrade", holder.pid)
    finally:
        fresh.close()


def test_reconcile_corrects_a_lost_event_loudly(monitor: Monitor, runtime_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    assert monitor.reconcile() is None
    monitor.state = opstate.State(True, "backup", 1, 0, 1.0, "ghost")  # as if the release event were lost
    with caplog.at_level(logging.ERROR):
        change = monitor.reconcile()
    assert change is not None and change.new == opstate.State()
    assert "published state was wrong" in caplog.text


def test_irrelevant_files_do_not_trigger_a_probe(monitor: Monitor, runtime_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[Path] = []
    monkeypatch.setattr("opstate.monitor.probe", lambda d: probes.append(d) or opstate.State())
    (runtime_dir / "unrelated").write_text("x")
    select.select([monitor], [], [], 2)
    assert monitor.on_events() is None
    assert probes == []


@pytest.fixture
def glib_loop() -> Iterator[glue.EventLoop]:
    loop = glue.EventLoop()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    yield loop
    loop.quit()
    thread.join(timeout=5)


def test_errors_cross_the_bus_under_our_names_and_come_back_typed(bus: PrivateBus,
                                                                  glib_loop: glue.EventLoop) -> None:
    def broken() -> opstate.State:
        raise opstate.RuntimeDirError("cannot read /proc/locks: gone")

    connection = glue.connect(bus.address)
    publication = glue.Publication(connection, glue.OpStateInterface(broken))
    try:
        with pytest.raises(opstate.RuntimeDirError, match="cannot read /proc/locks: gone"):
            glue.read_state(glue.connect(bus.address), bus.address)
        raw = subprocess.run(["gdbus", "call", "-a", bus.address, "-d", "org.opstate.OpState1", "-o",
                              "/org/opstate/OpState1", "-m", "org.opstate.OpState1.GetState"],
                             capture_output=True, text=True, timeout=10)
        assert "org.opstate.OpState1.Error.RuntimeDir" in raw.stderr
        prop = subprocess.run(["busctl", f"--address={bus.address}", "get-property", "org.opstate.OpState1",
                               "/org/opstate/OpState1", "org.opstate.OpState1", "InProgress"],
                              capture_output=True, text=True, timeout=10)
        assert prop.returncode != 0 and "unknown." not in prop.stderr
    finally:
        publication.close()


def test_unreachable_daemon_is_unavailable_not_idle(bus: PrivateBus) -> None:
    with pytest.raises(opstate.Unavailable, match="does not answer"):
        glue.read_state(glue.connect(bus.address), bus.address)
    with pytest.raises(opstate.Unavailable, match="cannot connect"):
        glue.connect("unix:path=/nonexistent/bus")
