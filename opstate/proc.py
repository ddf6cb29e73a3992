# SPDX-License-Identifier: MIT
"""What the kernel says about processes and flocks, read from /proc without side effects."""

from __future__ import annotations

import os

__all__ = ["ancestors", "command_name", "flock_holder", "process_uid", "start_time"]

PROC = "/proc"


def start_time(pid: int) -> int | None:
    """Return the process start time in clock ticks since boot, or None if ``pid`` is gone.

    Together with the pid it names one process for its whole life: a reused pid has another start time.
    """
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses; the fields after the last ')' are fixed (proc(5)).
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


def command_name(pid: int) -> str:
    """Return the kernel's short command name of ``pid`` ("" if it is gone)."""
    try:
        with open(f"{PROC}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def process_uid(pid: int) -> int | None:
    """Return the real uid of ``pid``, or None if it is gone."""
    try:
        return os.stat(f"{PROC}/{pid}").st_uid
    except FileNotFoundError:
        return None


def ancestors(pid: int) -> list[int]:
    """Return ``pid`` and the pids of its ancestors, nearest first."""
    chain = []
    while pid > 0:
        chain.append(pid)
        try:
            with open(f"{PROC}/{pid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            break
        pid = int(data[data.rindex(b")") + 2 :].split()[1])
    return chain


def flock_holder(st: os.stat_result) -> int | None:
    """Return the pid holding an exclusive flock on the inode of ``st``, or None if nobody does.

    /proc/locks prints the device as hex ``major:minor`` and the inode in decimal (proc(5)); waiting
    requests are marked with ``->`` and are not holders.
    """
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}".encode()
    with open(f"{PROC}/locks", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == key:
                return int(fields[4])
    return None
