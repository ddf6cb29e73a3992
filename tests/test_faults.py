# SPDX-License-Identifier: MIT
"""Environment faults and bad input: each gets a clear error, and state and lock stay as they were."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import opstate, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import Daemon, PrivateBus, RestServer

import opstate as lib
from opstate import bus as glue
from opstate.client import StateWatcher

NAME, PATH, IFACE = "org.opstate.OpState1", "/org/opstate/OpState1", "org.opstate.OpState1"
NODE = "/status/system/config/backupRestoreUpgradeInProgress"


@pytest.fixture
def tmpfs(base_dir: Path) -> Iterator[Path]:
    """A 4 KiB tmpfs (one page) mounted for the test."""
    mount = base_dir / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_missing_runtime_dir_reads_idle_and_is_created_by_an_operation(runtime_dir: Path) -> None:
    assert not runtime_dir.exists()
    assert lib.probe(runtime_dir) == lib.State()
    assert subprocess.run(opstate("status", "--direct"), capture_output=True, text=True).stdout == "idle\n"
    with lib.operation("backup", runtime_dir=runtime_dir):
        assert lib.probe(runtime_dir).operation == "backup"


def test_read_only_runtime_dir(tmpfs: Path) -> None:
    runtime_dir = tmpfs / "run"
    with lib.operation("backup", runtime_dir=runtime_dir):
        pass
    before = files(runtime_dir)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = subprocess.run(opstate("run", "upgrade", "--runtime-dir", str(runtime_dir), "--", "true"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 71
    assert result.stderr == f"opstate: cannot open lock file {runtime_dir}/operation.lock: Read-only file system\n"
    assert files(runtime_dir) == before
    assert lib.probe(runtime_dir) == lib.State()


def test_full_runtime_dir_gives_a_clear_error_and_no_half_record(tmpfs: Path) -> None:
    runtime_dir = tmpfs / "run"
    with lib.operation("backup", runtime_dir=runtime_dir):
        pass
    with open(tmpfs / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 512)
        except OSError:
            pass
    before = files(runtime_dir)
    result = subprocess.run(opstate("run", "upgrade", "--runtime-dir", str(runtime_dir), "--", "true"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 71
    assert result.stderr == (f"opstate: cannot write holder record {runtime_dir}/holder.json: No space left on "
                             "device; free space in the runtime directory or make it writable\n")
    assert files(runtime_dir) == before
    assert lib.probe(runtime_dir) == lib.State()


def test_unreadable_proc_locks_is_an_error_not_idle(runtime_dir: Path, base_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with lib.operation("backup", runtime_dir=runtime_dir):
        monkeypatch.setattr("opstate.proc.PROC", str(base_dir / "no-proc"))
        with pytest.raises(lib.RuntimeDirError, match=r"^cannot read /proc/locks: No such file or directory; "):
            lib.probe(runtime_dir)


def test_bus_going_away_makes_readers_say_unknown(daemon: Daemon, bus: PrivateBus) -> None:
    with StateWatcher() as watcher:
        assert watcher.wait_for(lambda s: s is not None, timeout=5) == lib.State()
        bus.stop()
        watcher.wait_for(lambda s: s is None, timeout=5)
    assert daemon.proc is not None and daemon.proc.wait(timeout=5) == 1
    status = subprocess.run(opstate("status"), capture_output=True, text=True, timeout=30)
    assert status.returncode == 69 and status.stdout == ""


ALLOWED_DBUS_ERRORS = {
    "org.freedesktop.DBus.Error.InvalidArgs", "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface", "org.freedesktop.DBus.Error.UnknownProperty",
    "org.freedesktop.DBus.Error.PropertyReadOnly", "org.freedesktop.DBus.Error.InvalidSignature",
}

VARIANT_VALUES = st.one_of(st.text(max_size=300), st.integers(0, 2**32 - 1), st.booleans(),
                           st.just("x" * 70000))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(member=st.sampled_from(["GetState", "Get", "GetAll", "Set", "Frobnicate"]),
       iface=st.sampled_from([IFACE, "org.freedesktop.DBus.Properties", "org.example.Nope"]),
       args=st.lists(VARIANT_VALUES, max_size=4))
def test_fuzzed_dbus_calls_get_standard_errors_and_change_nothing(daemon_for_fuzz: tuple[Daemon, PrivateBus],
                                                                  member: str, iface: str,
                                                                  args: list[object]) -> None:
    from gi.repository import Gio, GLib

    daemon, bus = daemon_for_fuzz
    signature = "".join("s" if isinstance(a, str) else "b" if isinstance(a, bool) else "u" for a in args)
    con = glue.connect(bus.address).con
    try:
        con.call_sync(NAME, PATH, iface, member, GLib.Variant(f"({signature})", tuple(args)), None,
                      Gio.DBusCallFlags.NONE, 5000, None)
    except GLib.Error as exc:
        assert Gio.DBusError.get_remote_error(exc) in ALLOWED_DBUS_ERRORS, exc.message
    else:
        assert (iface, member) in {(IFACE, "GetState"), ("org.freedesktop.DBus.Properties", "Get"),
                                   ("org.freedesktop.DBus.Properties", "GetAll")}
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert glue.read_state(glue.connect(bus.address), bus.address) == lib.State()


@pytest.fixture(scope="module")
def daemon_for_fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, PrivateBus]]:
    work = tmp_path_factory.mktemp("fuzz")
    bus = PrivateBus(work / "bus")
    daemon = Daemon(bus, work / "run", work).start()
    yield daemon, bus
    daemon.stop()
    bus.stop()


@pytest.fixture(scope="module")
def rest_for_fuzz(daemon_for_fuzz: tuple[Daemon, PrivateBus], tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[tuple[RestServer, str]]:
    daemon, bus = daemon_for_fuzz
    work = tmp_path_factory.mktemp("rest-fuzz")
    old = os.environ.get("OPSTATE_RUNTIME_DIR")
    server = RestServer(bus, daemon.runtime_dir, work)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/login", "username=demo&password=secret",
                 {"Content-Type": "application/x-www-form-urlencoded"})
    reply = conn.getresponse()
    reply.read()
    cookie = reply.getheader("Set-Cookie", "").split(";")[0]
    yield server, cookie
    server.stop()
    assert os.environ.get("OPSTATE_RUNTIME_DIR") == old


SEGMENTS = st.sampled_from(["lrs", "api", "v1.0", "status", "system", "config", "exec", "util", "backup", "home",
                            "upgrade", "..", ".", "%2e%2e", "%FF", "%00", "backupRestoreUpgradeInProgress",
                            "etc", "passwd", "", "ünïcödé", "a" * 300])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(segments=st.lists(SEGMENTS, max_size=8), prefix=st.booleans(),
       method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       body=st.one_of(st.binary(max_size=300), st.just(b'{"data": "x", "type": "string", "default": false}'),
                      st.just(b"\xff\xfe\x00"), st.just(b"{" * 20000)),
       with_session=st.booleans(), huge_cookie=st.booleans(), query=st.sampled_from(["", "?op=list",
                                                                                     "?level=recurse", "?op=%ff"]))
def test_fuzzed_rest_requests_get_envelope_errors_and_change_nothing(
        rest_for_fuzz: tuple[RestServer, str], daemon_for_fuzz: tuple[Daemon, PrivateBus], segments: list[str],
        prefix: bool, method: str, body: bytes, with_session: bool, huge_cookie: bool, query: str) -> None:
    server, cookie = rest_for_fuzz
    daemon, _ = daemon_for_fuzz
    path = ("/lrs/api/v1.0/" if prefix else "/") + "/".join(segments)
    headers = {"Cookie": ("junk=" + "x" * 60000 + "; " if huge_cookie else "") + (cookie if with_session else "")}
    # Raw bytes on the wire: http.client would refuse the non-ASCII targets we want to send.
    head = f"{method} {path}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode("utf-8") + body)
        reply = http.client.HTTPResponse(sock, method=method)
        reply.begin()
        data = reply.read()
    assert reply.status in {200, 302, 400, 401, 404, 405, 413, 431, 501}, (reply.status, data)
    if reply.status >= 400 and data and method != "HEAD" and reply.getheader("Content-Type") == "application/json":
        envelope = json.loads(data)
        assert set(envelope) == {"httpResponseCode", "internalResponseCode", "message", "recurse", "requestPath"}
        assert envelope["httpResponseCode"] == reply.status
    assert server.proc.poll() is None
    assert lib.probe(daemon.runtime_dir) == lib.State()


def test_rest_still_answers_the_seed_after_fuzzing(rest_for_fuzz: tuple[RestServer, str]) -> None:
    server, cookie = rest_for_fuzz
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/lrs/api/v1.0" + NODE, headers={"Cookie": cookie})
    answer = json.loads(conn.getresponse().read())
    assert answer[NODE]["data"] == 0 and answer["requestPath"] == NODE
    wait_for(lambda: server.proc.poll() is None, timeout=1, what="server alive")
