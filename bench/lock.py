#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Benchmark of the operation lock, each figure beside its floor measured in the same run.

- uncontended acquire+release of ``operation()`` vs a bare ``fcntl.flock`` pair;
- release -> waiter hand-off p50/p99 vs a bare blocking flock hand-off (and filelock's own polling);
- the waiter's CPU time over a 5 s wait vs filelock's polling wait.

Run: .venv/bin/python bench/lock.py [--rounds N]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pipe, Process
from multiprocessing.connection import Connection
from pathlib import Path

from filelock import lock_descriptor

import opstate

Locker = Callable[[Path], Callable[[], None]]  # returns a release function once it holds the lock


def with_operation(rt: Path) -> Callable[[], None]:
    cm = opstate.operation("backup", runtime_dir=rt, wait=None)
    cm.__enter__()
    return lambda: cm.__exit__(None, None, None) and None


def bare_flock(rt: Path) -> Callable[[], None]:
    fd = os.open(rt / "operation.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return lambda: os.close(fd)


def filelock_polling(rt: Path) -> Callable[[], None]:
    fd = os.open(rt / "operation.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    lock_descriptor(fd, blocking=True)  # filelock's default 50 ms polling
    return lambda: os.close(fd)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def uncontended(locker: Locker, rt: Path, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        locker(rt)()
    return (time.perf_counter() - start) / rounds * 1e6


def _waiter(locker: Locker, rt: Path, conn: Connection) -> None:
    while conn.recv():
        release = locker(rt)
        acquired = time.monotonic_ns()
        release()
        conn.send(acquired)


def handoff(locker: Locker, rt: Path, rounds: int) -> list[float]:
    parent, child = Pipe()
    proc = Process(target=_waiter, args=(locker, rt, child))
    proc.start()
    latencies = []
    for _ in range(rounds):
        release = locker(rt)
        parent.send(True)
        time.sleep(0.003)  # the waiter is now asleep waiting for us
        released = time.monotonic_ns()
        release()
        latencies.append((parent.recv() - released) / 1000)
    parent.send(False)
    proc.join()
    return latencies


def _timed_wait(locker: Locker, rt: Path, conn: Connection) -> None:
    conn.recv()
    start = time.process_time()
    release = locker(rt)
    conn.send(time.process_time() - start)
    release()


def waiter_cpu(locker: Locker, rt: Path, seconds: float) -> float:
    # The waiter forks before we lock: a child must not inherit the lock's descriptor (or $OPSTATE_HELD).
    parent, child = Pipe()
    proc = Process(target=_timed_wait, args=(locker, rt, child))
    proc.start()
    release = locker(rt)
    parent.send(True)
    time.sleep(seconds)
    release()
    cpu = parent.recv()
    proc.join()
    return float(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--wait-seconds", type=float, default=5.0)
    args = parser.parse_args()
    # /run/opstate is a tmpfs on the appliance; /dev/shm is the same kind of filesystem.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        rt = Path(tmp) / "run"
        with opstate.operation("backup", runtime_dir=rt):
            pass
        ours = uncontended(with_operation, rt, args.rounds * 10)
        floor = uncontended(bare_flock, rt, args.rounds * 10)
        print(f"uncontended acquire+release: operation() {ours:.1f} us, bare flock pair {floor:.1f} us "
              f"-> {ours / floor:.1f}x the floor")
        ours_h = handoff(with_operation, rt, args.rounds)
        floor_h = handoff(bare_flock, rt, args.rounds)
        poll_h = handoff(filelock_polling, rt, max(20, args.rounds // 10))
        for name, values in (("operation()", ours_h), ("bare blocking flock", floor_h),
                             ("filelock polling", poll_h)):
            p50, p99 = statistics.median(values), pct(values, 0.99)
            print(f"hand-off {name:20s} p50 {p50:8.1f} us  p99 {p99:8.1f} us  "
                  f"({p50 / statistics.median(floor_h):.1f}x / {p99 / pct(floor_h, 0.99):.1f}x the floor)")
        print(f"  target: operation() hand-off p99 <= 1000 us: {'met' if pct(ours_h, 0.99) <= 1000 else 'MISSED'}")
        cpu = waiter_cpu(with_operation, rt, args.wait_seconds)
        cpu_poll = waiter_cpu(filelock_polling, rt, args.wait_seconds)
        print(f"waiter CPU over a {args.wait_seconds:.0f} s wait: operation() {cpu:.2f} ms, "
              f"filelock polling {cpu_poll:.2f} ms ({cpu / cpu_poll:.2f}x); target <= 10 ms: "
              f"{'met' if cpu <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
