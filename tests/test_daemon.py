# SPDX-License-Identifier: MIT
"""The daemon on a private bus, seen through outside clients (busctl, gdbus, dbus-send) and our own."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import Procs, opstate, wait_for
from services import Daemon, PrivateBus

import opstate as lib
from opstate.bus import OpStateInterface
from opstate.client import StateWatcher, get_state

NAME, PATH, IFACE = "org.opstate.OpState1", "/org/opstate/OpState1", "org.opstate.OpState1"


def busctl(bus: PrivateBus, *args: str) -> str:
    return subprocess.run(["busctl", f"--address={bus.address}", *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


def in_progress_by_all_tools(bus: PrivateBus) -> set[str]:
    by_busctl = busctl(bus, "get-property", NAME, PATH, IFACE, "InProgress").split()[-1]
    by_gdbus = subprocess.run(["gdbus", "call", "-a", bus.address, "-d", NAME, "-o", PATH, "-m",
                               "org.freedesktop.DBus.Properties.Get", IFACE, "InProgress"],
                              capture_output=True, text=True, check=True, timeout=10).stdout
    by_dbus_send = subprocess.run(["dbus-send", f"--bus={bus.address}", "--print-reply", f"--dest={NAME}", PATH,
                                   "org.freedesktop.DBus.Properties.Get", f"string:{IFACE}", "string:InProgress"],
                                  capture_output=True, text=True, check=True, timeout=10).stdout
    return {by_busctl, re.search(r"uint32 (\d)", by_gdbus).group(1),  # type: ignore[union-attr]
            re.search(r"uint32 (\d)", by_dbus_send).group(1)}  # type: ignore[union-attr]


class Monitor:
    """``gdbus monitor`` on our name, its lines collected by a thread."""

    def __init__(self, bus: PrivateBus) -> None:
        self.proc = subprocess.Popen(["gdbus", "monitor", "-a", bus.address, "-d", NAME],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("is owned by")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, pattern: str, timeout: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s") from None
            if re.search(pattern, line):
                return line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)


def test_outside_tools_read_0_then_1_then_0(daemon: Daemon, bus: PrivateBus, runtime_dir: Path, procs: Procs,
                                            base_dir: Path) -> None:
    assert in_progress_by_all_tools(bus) == {"0"}
    marker = base_dir / "started"
    runner = procs.start(opstate("run", "backup", "--", "sh", "-c", f"touch {marker}; sleep 3"))
    wait_for(marker.exists, what="the backup to start")
    wait_for(lambda: in_progress_by_all_tools(bus) == {"1"}, timeout=1, what="InProgress=1")
    assert busctl(bus, "get-property", NAME, PATH, IFACE, "Operation") == 's "backup"'
    assert busctl(bus, "get-property", NAME, PATH, IFACE, "HolderPid") == f"u {runner.pid}"
    assert runner.wait(timeout=10) == 0
    wait_for(lambda: in_progress_by_all_tools(bus) == {"0"}, timeout=1, what="InProgress=0")
    assert "org.opstate.OpState1" in busctl(bus, "introspect", NAME, PATH)


def _members(xml: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    iface = next(i for i in ET.fromstring(xml).iter("interface") if i.get("name") == IFACE)
    return sorted((f"{e.tag}:{e.get('name')}:{e.get('type', '')}:{e.get('access', '')}",
                   tuple((a.get("name", ""), a.get("type", "")) for a in e.iter("arg"))) for e in iface)


def test_introspection_matches_the_declared_xml(daemon: Daemon, bus: PrivateBus) -> None:
    served = subprocess.run(["gdbus", "introspect", "--xml", "-a", bus.address, "-d", NAME, "-o", PATH],
                            capture_output=True, text=True, check=True, timeout=10).stdout
    assert _members(served) == _members(OpStateInterface.dbus)
    names = {n for n, _ in _members(OpStateInterface.dbus)}
    assert {"property:InProgress:u:read", "method:GetState::", "signal:Started::", "signal:Finished::"} <= names


def test_signals_for_acquisition_release_and_sigkill(daemon: Daemon, bus: PrivateBus, runtime_dir: Path,
                                                     procs: Procs) -> None:
    monitor = Monitor(bus)
    try:
        holder = procs.holder("upgrade", runtime_dir, seconds=0.3)
        monitor.expect(r"PropertiesChanged \('org.opstate.OpState1', \{.*'InProgress': <uint32 1>")
        monitor.expect(rf"Started \('upgrade', uint32 {holder.pid}\)")
        assert holder.wait(timeout=5) == 0
        monitor.expect(rf"Finished \('upgrade', uint32 {holder.pid}, 'released'\)")
        monitor.expect(r"'InProgress': <uint32 0>")
        victim = procs.holder("restore", runtime_dir)
        monitor.expect(rf"Started \('restore', uint32 {victim.pid}\)")
        victim.kill()
        monitor.expect(rf"Finished \('restore', uint32 {victim.pid}, 'holder-died'\)")
        monitor.expect(r"'InProgress': <uint32 0>")
    finally:
        monitor.close()
    log = daemon.log_text()
    assert f"upgrade started by pid {holder.pid}" in log
    assert f"restore finished: holder pid {victim.pid} died" in log


def test_get_state_is_one_snapshot(daemon: Daemon, runtime_dir: Path, procs: Procs) -> None:
    assert get_state() == lib.State()
    holder = procs.holder("backup", runtime_dir)
    state = wait_for(lambda: (s := get_state()).in_progress and s, timeout=1, what="in progress")
    direct = lib.probe(runtime_dir)
    assert state.since == pytest.approx(direct.since, abs=1e-6)  # type: ignore[union-attr]
    assert state == lib.State(**{**direct.__dict__, "since": state.since})  # type: ignore[union-attr]
    assert (state.operation, state.pid, state.uid) == ("backup", holder.pid, 0)  # type: ignore[union-attr]


def test_daemon_restart_during_an_operation(daemon: Daemon, runtime_dir: Path, procs: Procs) -> None:
    holder = procs.holder("upgrade", runtime_dir)
    wait_for(lambda: get_state().in_progress, timeout=1, what="in progress")
    daemon.kill(signal.SIGKILL)
    with pytest.raises(lib.Unavailable):
        get_state()
    busy = subprocess.run(opstate("run", "backup", "--", "true"), capture_output=True, text=True, timeout=30)
    assert busy.returncode == 75, "the lock, not the daemon, refuses a second operation"
    daemon.start()
    first = get_state()
    assert (first.in_progress, first.operation, first.pid) == (True, "upgrade", holder.pid)
    assert holder.poll() is None, "the operation was disturbed"


def test_sd_notify_protocol(bus: PrivateBus, runtime_dir: Path, base_dir: Path, procs: Procs) -> None:
    daemon = Daemon(bus, runtime_dir, base_dir, env={"WATCHDOG_USEC": "200000"}).start()
    try:
        notify = daemon.notify
        assert notify is not None
        assert notify.expect("STATUS=") == "STATUS=idle"
        notify.expect("WATCHDOG=1", timeout=2)
        procs.holder("backup", runtime_dir)
        assert re.match(r"STATUS=backup in progress \(pid \d+ python\S*, since \d\d:\d\d:\d\d\)$",
                        notify.expect("STATUS=backup", timeout=2))
        start = time.monotonic()
        assert daemon.kill(signal.SIGTERM) == 0
        assert time.monotonic() - start < 1
        notify.expect("STOPPING=1", timeout=1)
        assert NAME not in busctl(bus, "list", "--no-pager")
    finally:
        daemon.stop()


def test_daemon_exits_nonzero_when_the_bus_goes_away(daemon: Daemon, bus: PrivateBus) -> None:
    bus.stop()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=5) != 0
    assert "lost the connection" in daemon.log_text()


def test_second_daemon_cannot_take_the_name(daemon: Daemon, bus: PrivateBus, runtime_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "opstate.daemon", "--bus", bus.address, "--runtime-dir",
                             str(runtime_dir)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot own org.opstate.OpState1" in result.stderr


def test_status_wait_and_watch(bus: PrivateBus, runtime_dir: Path, base_dir: Path, procs: Procs) -> None:
    down = subprocess.run(opstate("status"), capture_output=True, text=True, timeout=30)
    assert down.returncode == 69
    assert "state unknown" in down.stderr and "daemon" in down.stderr
    assert down.stdout == ""
    daemon = Daemon(bus, runtime_dir, base_dir).start()
    try:
        watcher = procs.start(opstate("watch", "--json"))
        assert watcher.stdout is not None
        assert json.loads(watcher.stdout.readline())["inProgress"] == 0
        holder = procs.holder("restore", runtime_dir, seconds=1.5)
        assert json.loads(watcher.stdout.readline())["pid"] == holder.pid
        timed_out = subprocess.run(opstate("wait", "--timeout", "0.3"), capture_output=True, text=True, timeout=30)
        assert timed_out.returncode == 75 and "restore in progress" in timed_out.stderr
        assert subprocess.run(opstate("wait", "--timeout", "10"), timeout=30).returncode == 0
        assert not lib.probe(runtime_dir).in_progress
        assert json.loads(watcher.stdout.readline())["inProgress"] == 0
        status = subprocess.run(opstate("status"), capture_output=True, text=True, timeout=30)
        assert (status.returncode, status.stdout) == (0, "idle\n")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=5) == 0
    finally:
        daemon.stop()


def test_status_and_wait_inside_an_operations_hook(daemon: Daemon, runtime_dir: Path) -> None:
    hook = f"{' '.join(opstate('status'))}; {' '.join(opstate('wait'))}; echo wait=$?"
    result = subprocess.run(opstate("run", "upgrade", "--", "sh", "-c", hook), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.match(r"upgrade in progress \(pid \d+ sh, since", result.stdout)
    assert "wait=75" in result.stdout and "cannot wait: this process runs inside upgrade" in result.stderr


def test_state_watcher_knows_when_the_daemon_is_gone_and_back(daemon: Daemon, runtime_dir: Path,
                                                              procs: Procs) -> None:
    with StateWatcher() as watcher:
        assert watcher.wait_for(lambda s: s is not None, timeout=5) == lib.State()
        daemon.kill(signal.SIGKILL)
        watcher.wait_for(lambda s: s is None, timeout=2)
        with pytest.raises(lib.Unavailable):
            watcher.get()
        holder = procs.holder("backup", runtime_dir)
        daemon.start()
        state = watcher.wait_for(lambda s: s is not None, timeout=2)
        assert state is not None and state.pid == holder.pid


@pytest.mark.parametrize("name", ["opstate.service", "opstate-rest.service"])
def test_unit_files_pass_systemd_analyze_verify(base_dir: Path, name: str) -> None:
    root = Path(__file__).resolve().parent.parent
    unit = (root / "systemd" / name).read_text()
    assert "ExecStart=/usr/local/bin/opstate" in unit
    local = base_dir / name
    local.write_text(unit.replace("/usr/local/bin/", str(Path(sys.executable).parent) + "/"))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    broken = base_dir / f"broken-{name}"
    broken.write_text(local.read_text().replace("ExecStart=", "ExecStart=/nonexistent/opstated #"))
    assert subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                          timeout=60).returncode != 0
