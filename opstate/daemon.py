# SPDX-License-Identifier: MIT
"""``opstated``: derives the in-progress flag from the lock and publishes it on D-Bus under systemd.

sd_notify protocol (sd_notify(3)): READY=1 once the name is owned and the first state derived,
STATUS= on every change, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM. If the bus
connection drops we exit non-zero so that systemd restarts us (Restart=on-failure).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import sdnotify

from opstate import bus, runtime
from opstate.errors import Error
from opstate.monitor import Change, Monitor, RuntimeDirGone
from opstate.names import BUS_ENV, BUS_NAME
from opstate.state import State

__all__ = ["main"]

log = logging.getLogger("opstated")

#: Without a systemd watchdog, how often the safety reconcile runs.
RECONCILE_SECONDS = 60.0


def setup_logging(level: str, program: str = "opstated") -> None:
    """Log to stderr: with syslog priority prefixes under journald (sd-daemon(3)), plain otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        levels = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

        class _Journal(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return f"<{levels.get(record.levelname, 6)}>{super().format(record)}"

        handler.setFormatter(_Journal("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {program}[%(process)d] %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if no watchdog is asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def _status(state: State) -> str:
    return f"STATUS={state.describe(age=False)}"


def serve(spec: str, monitor: Monitor) -> int:
    """Publish ``monitor``'s state on the bus ``spec`` until SIGTERM; return the exit code."""
    notifier = sdnotify.SystemdNotifier()
    if notifier.socket is not None:
        # A manager that does not read must never stall the daemon; a dropped STATUS= is harmless.
        notifier.socket.setblocking(False)
    loop = bus.EventLoop()
    connection = bus.connect(spec)
    interface = bus.OpStateInterface(lambda: monitor.state)

    def publish(change: Change | None) -> None:
        if change is not None:
            interface.announce(change.old, change.new, change.events)
            notifier.notify(_status(change.new))

    def on_events() -> None:
        try:
            publish(monitor.on_events())
        except RuntimeDirGone as exc:
            log.error("%s; exiting so that systemd restarts us", exc)
            loop.quit(1)

    def stop() -> None:
        log.info("stopping")
        notifier.notify("STOPPING=1")
        publication.close()
        loop.quit(0)

    def disconnected() -> None:
        log.error("lost the connection to the %s bus; exiting so that systemd restarts us", spec)
        loop.quit(1)

    loop.watch_fd(monitor.fileno(), on_events)
    loop.on_signal(signal.SIGTERM, stop)
    loop.on_signal(signal.SIGINT, stop)
    loop.on_disconnect(connection, disconnected)
    interval = watchdog_interval()
    if interval is None:
        loop.every(RECONCILE_SECONDS, lambda: publish(monitor.reconcile()))
    else:
        def tick() -> None:
            publish(monitor.reconcile())
            notifier.notify("WATCHDOG=1")

        loop.every(interval, tick)
    publication = bus.Publication(connection, interface)
    log.info("serving %s on the %s bus for %s: %s", BUS_NAME, spec, monitor.directory, monitor.state.describe())
    notifier.notify(f"READY=1\n{_status(monitor.state)}")
    return loop.run()


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; return its exit code (0 after SIGTERM, non-zero on failure)."""
    parser = argparse.ArgumentParser(prog="opstated", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bus", default=os.environ.get(BUS_ENV, "system"),
                        help="system, session or a D-Bus address (default $OPSTATE_BUS or system)")
    parser.add_argument("--runtime-dir", help="default $OPSTATE_RUNTIME_DIR or /run/opstate")
    parser.add_argument("--group", help="group that owns a runtime directory we create (may read the state)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    directory = runtime.resolve(args.runtime_dir)
    try:
        runtime.prepare(directory, args.group)
        monitor = Monitor(directory)
        try:
            return serve(args.bus, monitor)
        finally:
            monitor.close()
    except Error as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
