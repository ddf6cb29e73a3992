#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Benchmark of the daemon and its readers on a private bus, each figure beside a same-run baseline.

- property read through our client vs the bus daemon's own GetId round trip (same Gio connection);
- acquisition -> state at a subscriber, holder SIGKILL -> InProgress=0 at a subscriber (p50/p99);
- daemon RSS and CPU ticks over an idle period;
- spawn -> READY=1 vs spawn -> exit of a bare interpreter;
- ``opstate status`` wall time vs ``busctl get-property``.

Run: .venv/bin/python bench/daemon.py [--reads N] [--rounds N] [--idle-seconds S]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import Daemon, PrivateBus

import opstate
from opstate import bus as glue
from opstate.state import State

HOLDER = "import sys, time, opstate\nwith opstate.operation('backup', runtime_dir=sys.argv[1]):\n" \
         "    print('held', flush=True); time.sleep(60)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, ours: list[float], base: list[float], base_name: str, unit: str = "us") -> None:
    p50, p99, b50, b99 = statistics.median(ours), pct(ours, 0.99), statistics.median(base), pct(base, 0.99)
    print(f"{name}: p50 {p50:.0f} {unit}, p99 {p99:.0f} {unit} | {base_name}: p50 {b50:.0f} {unit}, "
          f"p99 {b99:.0f} {unit} -> {p50 / b50:.2f}x / {p99 / b99:.2f}x")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


class Seen:
    """Records when a subscriber sees a state matching a predicate."""

    def __init__(self, spec: str) -> None:
        self.cond = threading.Condition()
        self.state: State | None = None
        self.at = 0.0
        self.sub = glue.subscribe(spec, self.update)

    def update(self, state: State | None) -> None:
        with self.cond:
            self.state, self.at = state, time.perf_counter()
            self.cond.notify_all()

    def wait(self, predicate: Callable[[State | None], bool]) -> float:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.state), timeout=5), "subscriber saw nothing"
            return self.at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        work = Path(tmp)
        bus = PrivateBus(work / "bus")
        rt = work / "run"
        daemon = Daemon(bus, rt, work).start()
        try:
            connection = glue.connect(bus.address)
            con = connection.con
            get_id = lambda: con.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",  # noqa: E731
                                           "org.freedesktop.DBus", "GetId", None, None, 0, 3000, None)
            ping = lambda: con.call_sync("org.opstate.OpState1", "/org/opstate/OpState1",  # noqa: E731
                                         "org.freedesktop.DBus.Peer", "Ping", None, None, 0, 3000, None)
            ours = timed(lambda: glue.read_state(connection, bus.address), args.reads)
            base = timed(get_id, args.reads)
            pinged = timed(ping, args.reads)
            line("state read (GetState, our client)", ours, base, "GetId round trip")
            line("  Peer.Ping to our daemon (answered by Gio, no Python)", pinged, base, "GetId round trip")
            pydbus_prop = connection.get("org.opstate.OpState1", "/org/opstate/OpState1")
            slow = timed(lambda: pydbus_prop.InProgress, args.reads // 4)
            line("  for reference, a pydbus proxy property read", slow, base, "GetId round trip")

            seen = Seen(bus.address)
            seen.wait(lambda s: s is not None)
            acquire, kill = [], []
            for _ in range(args.rounds):
                with opstate.operation("upgrade", runtime_dir=rt):
                    t0 = time.perf_counter()
                    acquire.append((seen.wait(lambda s: s is not None and s.in_progress) - t0) * 1e6)
                seen.wait(lambda s: s is not None and not s.in_progress)
            for _ in range(max(10, args.rounds // 5)):
                holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rt)], stdout=subprocess.PIPE, text=True)
                assert holder.stdout is not None and holder.stdout.readline() == "held\n"
                seen.wait(lambda s, pid=holder.pid: s is not None and s.pid == pid)
                t0 = time.perf_counter()
                holder.send_signal(signal.SIGKILL)
                kill.append((seen.wait(lambda s: s is not None and not s.in_progress) - t0) * 1e6)
                holder.wait()
                holder.stdout.close()
            seen.sub.close()
            line("acquisition -> subscriber sees 1", acquire, base, "GetId round trip")
            line("holder SIGKILL -> subscriber sees 0", kill, base, "GetId round trip")
            print(f"  targets: p99 <= 5000 us: {'met' if pct(acquire, .99) <= 5000 else 'MISSED'}; "
                  f"p99 <= 10000 us: {'met' if pct(kill, .99) <= 10000 else 'MISSED'}")

            assert daemon.proc is not None
            pid = daemon.proc.pid
            ticks = lambda: sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))  # noqa: E731
            before = ticks()
            time.sleep(args.idle_seconds)
            used = ticks() - before
            rss = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS"))
            print(f"daemon idle for {args.idle_seconds:.0f} s: {used} CPU ticks (target 0), "
                  f"{rss.split()[1]} kB RSS (target <= 35840 kB)")
        finally:
            daemon.stop()

        spawn, bare = [], []
        for _i in range(5):
            start = time.perf_counter()
            d = Daemon(bus, rt, work).start()
            spawn.append((time.perf_counter() - start) * 1000)
            d.stop()
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append((time.perf_counter() - start) * 1000)
        line("spawn -> READY=1", spawn, bare, "spawn -> exit of a bare interpreter", unit="ms")
        print(f"  target: <= 300 ms: {'met' if statistics.median(spawn) <= 300 else 'MISSED'}")

        d = Daemon(bus, rt, work).start()
        try:
            env = {**os.environ, "OPSTATE_BUS": bus.address}
            status = timed(lambda: subprocess.run([sys.executable, "-m", "opstate", "status"], env=env,
                                                  capture_output=True, check=True), 10)
            busctl = timed(lambda: subprocess.run(["busctl", f"--address={bus.address}", "get-property",
                                                   "org.opstate.OpState1", "/org/opstate/OpState1",
                                                   "org.opstate.OpState1", "InProgress"],
                                                  capture_output=True, check=True), 10)
            line("opstate status wall time", [x / 1000 for x in status], [x / 1000 for x in busctl],
                 "busctl get-property", unit="ms")
        finally:
            d.stop()
            bus.stop()


if __name__ == "__main__":
    main()
