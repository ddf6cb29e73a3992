# SPDX-License-Identifier: MIT
"""Our D-Bus policy file on a private bus configured like the system bus, probed as ``nobody``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import Daemon, PrivateBus

NAME, PATH, IFACE = "org.opstate.OpState1", "/org/opstate/OpState1", "org.opstate.OpState1"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture
def system_bus(base_dir: Path) -> Iterator[PrivateBus]:
    bus = PrivateBus(base_dir / "sysbus", system_like=True)
    yield bus
    bus.stop()


def busctl(bus: PrivateBus, *args: str, as_nobody: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(NOBODY if as_nobody else []), "busctl", f"--address={bus.address}", *args],
                          capture_output=True, text=True, timeout=10)


def test_everyone_reads_nobody_else_owns_or_writes(system_bus: PrivateBus, runtime_dir: Path,
                                                   base_dir: Path) -> None:
    daemon = Daemon(system_bus, runtime_dir, base_dir).start()
    try:
        read = busctl(system_bus, "get-property", NAME, PATH, IFACE, "InProgress")
        assert (read.returncode, read.stdout.strip()) == (0, "u 0"), read.stderr
        snapshot = busctl(system_bus, "call", NAME, PATH, IFACE, "GetState")
        assert snapshot.returncode == 0 and '"InProgress" u 0' in snapshot.stdout, snapshot.stderr
        assert busctl(system_bus, "introspect", NAME, PATH).returncode == 0
        everything = busctl(system_bus, "call", NAME, PATH, "org.freedesktop.DBus.Properties", "GetAll", "s", IFACE)
        assert everything.returncode == 0, everything.stderr

        write = busctl(system_bus, "set-property", NAME, PATH, IFACE, "InProgress", "u", "1")
        assert write.returncode != 0 and "Access denied" in write.stderr
        own = busctl(system_bus, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                     "RequestName", "su", NAME, "4")
        assert own.returncode != 0 and "Access denied" in own.stderr, own.stdout
        assert busctl(system_bus, "get-property", NAME, PATH, IFACE, "InProgress").stdout.strip() == "u 0"
    finally:
        daemon.stop()


def test_root_may_own_the_name_but_nobody_may_not(system_bus: PrivateBus) -> None:
    def request(as_nobody: bool) -> str:
        return busctl(system_bus, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                      "RequestName", "su", NAME, "4", as_nobody=as_nobody).stdout.strip()

    assert request(as_nobody=False) == "u 1"  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER (busctl exits, name freed)
    assert request(as_nobody=True) == ""


def test_even_without_a_policy_the_daemon_refuses_writes(bus: PrivateBus, runtime_dir: Path,
                                                         base_dir: Path) -> None:
    daemon = Daemon(bus, runtime_dir, base_dir).start()
    try:
        write = busctl(bus, "set-property", NAME, PATH, IFACE, "InProgress", "u", "1", as_nobody=False)
        assert write.returncode != 0
        assert "not writable" in write.stderr, write.stderr
        bogus = busctl(bus, "call", NAME, PATH, IFACE, "GetState", "s", "extra", as_nobody=False)
        assert bogus.returncode != 0 and "unknown." not in bogus.stderr, bogus.stderr
        assert busctl(bus, "get-property", NAME, PATH, IFACE, "InProgress", as_nobody=False).stdout.strip() == "u 0"
    finally:
        daemon.stop()
