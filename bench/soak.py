#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Soak: contenders, SIGKILLs of holders and of the daemon, and readers, all at once; then check.

For ``--seconds`` (default 60) on a private bus and a temp runtime dir:
- contenders cycle backup/restore/upgrade through the library and through ``opstate run``; some are
  SIGKILLed mid-operation. Each holder logs enter/leave (CLOCK_MONOTONIC) while it holds the lock;
- the daemon is SIGKILLed and restarted at random moments;
- readers: a StateWatcher, plain D-Bus reads (GetState) and a logged-in keep-alive REST client.
Then it checks the invariants and prints figures. Exit 1 if any invariant fails.

Run: .venv/bin/python bench/soak.py [--seconds N] [--seed N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import itertools

from services import Daemon, PrivateBus, RestServer

from opstate import bus as glue
from opstate.client import StateWatcher
from opstate.errors import Unavailable
from opstate.names import KINDS

NODE = "/lrs/api/v1.0/status/system/config/backupRestoreUpgradeInProgress"
#: How long a change may take to reach a reader before a stale answer counts as wrong.
WINDOW_NS = 250_000_000
HOLD = """
import os, random, sys, time
log, hold = sys.argv[1], float(sys.argv[2])
# Whom the soak may SIGKILL for this hold: the runner under "opstate run", else this process.
victim = os.getpid() if sys.argv[3] == "library" else os.getppid()
def note(word):
    with open(log, "a") as f:
        f.write(f"{word} {os.getpid()} {time.monotonic_ns()} {victim}\\n")
def body():
    note("enter"); time.sleep(hold); note("leave")
if sys.argv[3] == "library":
    import opstate
    with opstate.operation(sys.argv[4], runtime_dir=sys.argv[5], wait=None):
        body()
else:
    body()
"""


@dataclass
class Run:
    """What the soak saw."""

    answers: list[tuple[int, int, int | None, str]] = field(default_factory=list)  # (t0, t1, value, reader)
    kills: dict[int, int] = field(default_factory=dict)  # pid -> monotonic ns just before SIGKILL
    # opstate run's holds, from its --ready-fd to its exit: a runner holds the lock before its command
    # starts, so an answer of 1 then is right although no note says so yet.
    runner_holds: list[tuple[int, int]] = field(default_factory=list)
    daemon_up: list[tuple[int, int]] = field(default_factory=list)  # from READY=1 to SIGKILL
    signals: set[tuple[str, int]] = field(default_factory=set)  # (Started|Finished, holder pid)
    listening: threading.Event = field(default_factory=threading.Event)
    completed: int = 0
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, t0: int, value: int | None, reader: str) -> None:
        with self.lock:
            self.answers.append((t0, time.monotonic_ns(), value, reader))


def contender(stop: threading.Event, run: Run, rng: random.Random, rt: Path, log: Path) -> None:
    while not stop.is_set():
        kind, how, hold = rng.choice(KINDS), rng.choice(["library", "run"]), rng.uniform(0.02, 0.3)
        script = [sys.executable, "-c", HOLD, str(log), str(hold), how, kind, str(rt)]
        ready_r, ready_w = os.pipe()
        argv = script if how == "library" else [sys.executable, "-m", "opstate", "run", kind, "--wait",
                                                "--ready-fd", str(ready_w), "--runtime-dir", str(rt), "--", *script]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(ready_w,))
        os.close(ready_w)
        killer = None
        if rng.random() < 0.2:
            def kill(proc: subprocess.Popen[bytes] = proc) -> None:
                with run.lock:
                    run.kills[proc.pid] = time.monotonic_ns()
                proc.kill()
            killer = threading.Timer(rng.uniform(0.05, 0.4), kill)
            killer.start()
        locked = os.read(ready_r, 16)  # "locked" from opstate run, or EOF
        locked_ns = time.monotonic_ns()
        os.close(ready_r)
        code = proc.wait()
        if locked:
            with run.lock:
                run.runner_holds.append((locked_ns, time.monotonic_ns()))
        if killer is not None:
            killer.join()
        if code == 0:
            with run.lock:
                run.completed += 1


def daemon_killer(stop: threading.Event, run: Run, rng: random.Random, daemon: Daemon) -> None:
    up_since = time.monotonic_ns()
    while not stop.wait(rng.uniform(1.0, 4.0)):
        run.daemon_up.append((up_since, time.monotonic_ns()))
        daemon.kill(signal.SIGKILL)
        time.sleep(rng.uniform(0.0, 0.3))
        daemon.start()
        up_since = time.monotonic_ns()
        run.restarts += 1
    run.daemon_up.append((up_since, time.monotonic_ns()))


def signal_listener(stop: threading.Event, run: Run, spec: str) -> None:
    """Collect Started/Finished as an outside client sees them (gdbus monitor follows the name's owner)."""
    monitor = subprocess.Popen(["gdbus", "monitor", "-a", spec, "-d", "org.opstate.OpState1"],
                               stdout=subprocess.PIPE, text=True)
    assert monitor.stdout is not None
    threading.Thread(target=lambda: (stop.wait(), monitor.terminate()), daemon=True).start()
    for line in monitor.stdout:
        if "is owned by" in line:
            run.listening.set()
        found = re.search(r"\.(Started|Finished) \('\w*', uint32 (\d+)", line)
        if found:
            with run.lock:
                run.signals.add((found.group(1), int(found.group(2))))
    monitor.wait()


def watcher_reader(stop: threading.Event, run: Run, spec: str) -> None:
    with StateWatcher(spec) as watcher:
        while not stop.wait(0.003):
            state = watcher.current
            run.answer(time.monotonic_ns(), None if state is None else int(state.in_progress), "watcher")


def dbus_reader(stop: threading.Event, run: Run, spec: str) -> None:
    connection = glue.connect(spec)
    while not stop.wait(0.005):
        t0 = time.monotonic_ns()
        try:
            value: int | None = int(glue.read_state(connection, spec).in_progress)
        except Unavailable:
            value = None
        run.answer(t0, value, "dbus")


def rest_reader(stop: threading.Event, run: Run, server: RestServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/login", "username=demo&password=secret",
                 {"Content-Type": "application/x-www-form-urlencoded"})
    reply = conn.getresponse()
    reply.read()
    cookie = re.search(r"connect\.sid=[^;]+", reply.getheader("Set-Cookie", "")).group(0)  # type: ignore[union-attr]
    while not stop.wait(0.005):
        t0 = time.monotonic_ns()
        conn.request("GET", NODE, headers={"Cookie": cookie})
        reply = conn.getresponse()
        body = reply.read()
        if reply.status == 200:
            run.answer(t0, json.loads(body)[NODE.removeprefix("/lrs/api/v1.0")]["data"], "rest")
        elif reply.status == 503:
            run.answer(t0, None, "rest")
        else:
            raise AssertionError(f"REST answered {reply.status}: {body!r}")


def truth(log: Path, kills: dict[int, int], end: int) -> list[tuple[int, int, int]]:
    """(enter, leave, pid of the lock holder) for every hold, from the holders' own notes."""
    enters: dict[int, tuple[int, int]] = {}
    holds = []
    for line in log.read_text().splitlines():
        word, pid, ns, victim = line.split()
        if word == "enter":
            enters[int(pid)] = (int(ns), int(victim))
        else:
            start, holder = enters.pop(int(pid))
            holds.append((start, int(ns), holder))
    # A killed holder never wrote "leave": it held at most until the SIGKILL (of it or of its runner).
    for start, victim in enters.values():
        holds.append((start, kills.get(victim, end), victim))
    return sorted(holds)


def lost_signals(holds: list[tuple[int, int, int]], run: Run) -> tuple[int, int]:
    """(holds that began and ended while the daemon was up, those of them missing Started or Finished)."""
    margin = 100_000_000  # the daemon derives its first state right after READY; leave it that long
    seen = lost = 0
    for start, leave, pid in holds:
        if any(up + margin < start and leave + margin < down for up, down in run.daemon_up):
            seen += 1
            lost += not {("Started", pid), ("Finished", pid)} <= run.signals
    return seen, lost


def check(intervals: list[tuple[int, int]], run: Run) -> dict[str, object]:
    overlaps = sum(1 for (_, leave), (enter, _) in itertools.pairwise(intervals) if enter < leave)
    wrong_zero = wrong_one = 0
    late_zero: list[float] = []
    late_one: list[float] = []
    for t0, t1, value, _reader in run.answers:
        if value is None:
            continue
        if value == 0:
            held = [(s, e) for s, e in intervals if s < t0 and e > t1]
            if held:
                lag = t0 - held[0][0]
                late_zero.append(lag / 1e6)
                wrong_zero += lag > WINDOW_NS
        else:
            holds = intervals + run.runner_holds
            if not any(s < t1 and e > t0 - WINDOW_NS for s, e in holds):
                wrong_one += 1
            elif not any(s < t1 and e > t0 for s, e in holds):
                before = [e for s, e in holds if e <= t0]
                late_one.append((t0 - max(before)) / 1e6 if before else 0.0)
    return {"overlaps": overlaps, "wrong_zero": wrong_zero, "wrong_one": wrong_one, "late_zero": late_zero,
            "late_one": late_one}


def describe_lags(name: str, lags: list[float]) -> str:
    if not lags:
        return f"{name}: none"
    return (f"{name}: {len(lags)}, max {max(lags):.1f} ms, p99 {sorted(lags)[int(0.99 * (len(lags) - 1))]:.1f} ms, "
            f"median {statistics.median(lags):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        rt, log = work / "run", work / "timeline"
        log.touch()
        bus = PrivateBus(work / "bus")
        daemon = Daemon(bus, rt, work).start()
        server = RestServer(bus, rt, work)
        run, stop = Run(), threading.Event()
        listener = threading.Thread(target=signal_listener, args=(stop, run, bus.address))
        listener.start()
        if not run.listening.wait(10):
            raise SystemExit("gdbus monitor did not start")
        threads = [listener]
        threads += [threading.Thread(target=contender, args=(stop, run, random.Random(seed + i), rt, log))
                   for i in range(3)]
        threads += [threading.Thread(target=daemon_killer, args=(stop, run, random.Random(seed - 1), daemon)),
                    threading.Thread(target=watcher_reader, args=(stop, run, bus.address)),
                    threading.Thread(target=dbus_reader, args=(stop, run, bus.address)),
                    threading.Thread(target=rest_reader, args=(stop, run, server))]
        failures: list[BaseException] = []
        threading.excepthook = lambda hook: failures.append(hook.exc_value)  # type: ignore[assignment,arg-type]
        for t in threads[1:]:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        end = time.monotonic_ns()
        server.stop()
        daemon.stop()
        bus.stop()
        holds = truth(log, run.kills, end)
    intervals = [(start, leave) for start, leave, _ in holds]
    result = check(intervals, run)
    observed, lost = lost_signals(holds, run)
    by_reader = {r: sum(1 for a in run.answers if a[3] == r and a[2] is not None) for r in ("watcher", "dbus", "rest")}
    unknown = sum(1 for a in run.answers if a[2] is None)
    print(f"seed {seed}, {args.seconds:.0f} s: {run.completed} operations completed, {len(run.kills)} holders "
          f"SIGKILLed, {run.restarts} daemon restarts, {len(intervals)} holds in the timeline")
    print(f"answers checked: {sum(by_reader.values())} ({', '.join(f'{k} {v}' for k, v in by_reader.items())}); "
          f"{unknown} 'unknown' while the daemon was down")
    print(f"how long the published state stayed wrong (answers inside the {WINDOW_NS / 1e6:.0f} ms window):")
    print("  " + describe_lags("0 after a hold began", result["late_zero"]))  # type: ignore[arg-type]
    print("  " + describe_lags("1 after every hold had ended", result["late_one"]))  # type: ignore[arg-type]
    print(f"signals: {observed} holds began and ended while the daemon was up; {lost} of them lack Started or "
          "Finished")
    print(f"invariants: overlapping holders {result['overlaps']}, 0 while held > window {result['wrong_zero']}, "
          f"1 long after release {result['wrong_one']}, lost signals {lost}, reader failures {len(failures)}")
    for exc in failures:
        print(f"  reader failure: {exc!r}")
    ok = not (result["overlaps"] or result["wrong_zero"] or result["wrong_one"] or lost or failures)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
