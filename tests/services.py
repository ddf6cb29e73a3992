# SPDX-License-Identifier: MIT
"""Services the tests start for themselves: a private dbus-daemon and the opstate daemon."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "systemd" / "org.opstate.OpState1.conf"

OPEN_POLICY = """<policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
  </policy>"""

# The default policy of Debian's /usr/share/dbus-1/system.conf, and our policy file included after it.
SYSTEM_POLICY = f"""<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <include>{POLICY}</include>"""


class PrivateBus:
    """A dbus-daemon on a unix socket in ``directory``; ``system_like`` applies our policy file."""

    def __init__(self, directory: Path, system_like: bool = False) -> None:
        directory.mkdir(exist_ok=True)
        self.socket = directory / "bus"
        config = directory / "bus.conf"
        config.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{"system" if system_like else "session"}</type>
  <listen>unix:path={self.socket}</listen>
  <auth>EXTERNAL</auth>
  {SYSTEM_POLICY if system_like else OPEN_POLICY}
</busconfig>
""")
        self.proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nosyslog", f"--config-file={config}",
                                      "--print-address=1"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "dbus-daemon did not start"
        self.address = f"unix:path={self.socket}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Return the first message line starting with ``prefix``, reading until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                for line in message.splitlines():
                    if line.startswith(prefix):
                        return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.messages}")
            self.sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


_instances = itertools.count()


class Daemon:
    """``opstated`` as a process; :meth:`start` returns once it sent READY=1."""

    def __init__(self, bus: PrivateBus, runtime_dir: Path, work: Path, env: dict[str, str] | None = None) -> None:
        self.bus, self.runtime_dir, self.work = bus, runtime_dir, work
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.notify: NotifySocket | None = None
        self.restarts = 0

    def start(self) -> Daemon:
        self.restarts += 1
        self.tag = f"{os.getpid()}-{next(_instances)}"
        self.notify = NotifySocket(self.work / f"notify-{self.tag}")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.env}
        self.log = (self.work / f"daemon-{self.tag}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "opstate.daemon", "--bus", self.bus.address,
                                      "--runtime-dir", str(self.runtime_dir)], env=env, stderr=self.log, text=True)
        self.notify.expect("READY=1")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=10)
        self.log.close()
        return code

    def log_text(self) -> str:
        return (self.work / f"daemon-{self.tag}.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        if self.notify is not None:
            self.notify.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RestServer:
    """``opstate rest`` as a process on loopback, with a users file holding ``demo``/``secret``."""

    def __init__(self, bus: PrivateBus, runtime_dir: Path, work: Path, hooks: Path | None = None,
                 extra: list[str] | None = None, scheme: str = "http") -> None:
        self.users = work / "users"
        subprocess.run([sys.executable, "-m", "opstate", "rest", "passwd", "demo", "--users", str(self.users)],
                       input="secret\n", text=True, check=True, capture_output=True, timeout=30)
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = work / f"rest-{self.port}.log"
        argv = [sys.executable, "-m", "opstate", "rest", "--port", str(self.port), "--users", str(self.users),
                "--bus", bus.address, "--runtime-dir", str(runtime_dir), *(extra or [])]
        if hooks is not None:
            argv += ["--hooks", str(hooks)]
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"REST server did not start: {self.log_path.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()
