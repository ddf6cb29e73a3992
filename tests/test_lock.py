# SPDX-License-Identifier: MIT
"""The operation lock and the probe, driven as a library on temp dirs (no bus)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Procs, wait_for

import opstate
from opstate import proc, record
from opstate.names import RECORD_NAME

CONTENDER = """
import sys, time, opstate
with opstate.operation(sys.argv[1], runtime_dir=sys.argv[2], wait=None):
    enter = time.monotonic_ns()
    time.sleep(0.002)
    leave = time.monotonic_ns()
    with open(sys.argv[3], "a") as f:
        f.write(f"{enter} {leave}\\n")
"""


def test_fifty_contenders_each_get_the_lock_once_and_never_overlap(runtime_dir: Path, base_dir: Path) -> None:
    log = base_dir / "timeline"
    kinds = opstate.KINDS
    children = [subprocess.Popen([sys.executable, "-c", CONTENDER, kinds[i % 3], str(runtime_dir), str(log)])
                for i in range(50)]
    for child in children:
        assert child.wait(timeout=120) == 0
    intervals = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert len(intervals) == 50
    for (_, leave), (enter, _) in itertools.pairwise(intervals):
        assert leave <= enter, "two holders overlapped"
    assert not opstate.probe(runtime_dir).in_progress


def test_probe_reports_the_holder_and_idle_after(runtime_dir: Path) -> None:
    assert opstate.probe(runtime_dir) == opstate.State()
    with opstate.operation("upgrade", runtime_dir=runtime_dir, command="upgrade.sh") as held:
        state = opstate.probe(runtime_dir)
        assert state == held
        assert (state.in_progress, state.operation, state.pid, state.command) == (True, "upgrade", os.getpid(),
                                                                                  "upgrade.sh")
        assert abs(state.since - time.time()) < 5  # type: ignore[operator]
    assert opstate.probe(runtime_dir) == opstate.State()
    assert not (runtime_dir / RECORD_NAME).exists()


def test_conflict_raises_busy_with_the_holder(runtime_dir: Path, procs: Procs) -> None:
    holder = procs.holder("upgrade", runtime_dir)
    with pytest.raises(opstate.Busy) as info, opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    assert info.value.holder.pid == holder.pid
    assert info.value.holder.operation == "upgrade"
    assert str(info.value).startswith(f"cannot start backup: upgrade in progress (pid {holder.pid} python")
    assert ", since " in str(info.value)


def test_wait_n_gives_up_after_n_seconds(runtime_dir: Path, procs: Procs) -> None:
    procs.holder("restore", runtime_dir)
    start = time.monotonic()
    with pytest.raises(opstate.Busy), opstate.operation("backup", runtime_dir=runtime_dir, wait=0.5):
        pass
    assert 0.45 <= time.monotonic() - start < 2.0


def test_waiter_gets_the_lock_when_the_holder_releases(runtime_dir: Path, procs: Procs) -> None:
    holder = procs.holder("backup", runtime_dir, seconds=0.5)
    start = time.monotonic()
    with opstate.operation("upgrade", runtime_dir=runtime_dir, wait=10) as state:
        assert time.monotonic() - start >= 0.4, "got the lock while the holder still held it"
        assert state.operation == "upgrade"
    assert holder.wait(timeout=5) == 0


def test_wait_reports_progress_to_the_callback(runtime_dir: Path, procs: Procs,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opstate.lock.PROGRESS_INTERVAL", 0.2)
    holder = procs.holder("backup", runtime_dir)
    seen: list[tuple[opstate.State, float]] = []
    with pytest.raises(opstate.Busy), opstate.operation("upgrade", runtime_dir=runtime_dir, wait=0.7,
                                                        on_wait=lambda s, w: seen.append((s, w))):
        pass
    assert len(seen) >= 2
    assert all(s.pid == holder.pid and s.operation == "backup" for s, _ in seen)


@pytest.mark.parametrize("how", ["library", "opstate run"])
def test_sigkilled_holder_releases_and_its_record_is_ignored(how: str, runtime_dir: Path, procs: Procs,
                                                            base_dir: Path) -> None:
    if how == "library":
        holder = procs.holder("upgrade", runtime_dir)
    else:
        marker = base_dir / "started"
        holder = procs.start([sys.executable, "-m", "opstate", "run", "upgrade", "--", sys.executable, "-c",
                              f"import pathlib, time; pathlib.Path('{marker}').touch(); time.sleep(30)"])
        wait_for(marker.exists, what="opstate run to start its command")
    assert opstate.probe(runtime_dir).pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=5)
    stale = record.read(runtime_dir)
    assert stale is not None and stale.pid == holder.pid, "a SIGKILLed holder leaves its record"
    assert opstate.probe(runtime_dir) == opstate.State()
    with opstate.operation("backup", runtime_dir=runtime_dir, wait=0):
        fresh = record.read(runtime_dir)
        assert fresh is not None and (fresh.pid, fresh.operation) == (os.getpid(), "backup")
    if how == "opstate run":
        # The command must not run on unlocked: the kernel kills it with its runner (PR_SET_PDEATHSIG).
        wait_for(lambda: not _running_with(str(marker)), timeout=2, what="the orphaned command to be killed")


def _running_with(word: str) -> list[int]:
    """Pids of live processes whose command line contains ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and word.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _forge(runtime_dir: Path, pid: int, start: int, operation: str = "upgrade") -> None:
    runtime_dir.mkdir(mode=0o750, exist_ok=True)
    (runtime_dir / "operation.lock").touch(mode=0o640)
    (runtime_dir / RECORD_NAME).write_text(json.dumps(
        {"operation": operation, "pid": pid, "start_time": start, "uid": 0, "since": time.time(), "command": "x"}))


def test_forged_record_without_a_kernel_lock_is_idle(runtime_dir: Path) -> None:
    _forge(runtime_dir, os.getpid(), proc.start_time(os.getpid()) or 0)
    assert opstate.probe(runtime_dir) == opstate.State()


def test_record_naming_a_reused_pid_is_idle(runtime_dir: Path, procs: Procs) -> None:
    other = procs.start(["sleep", "30"])
    _forge(runtime_dir, other.pid, (proc.start_time(other.pid) or 0) + 12345)
    assert opstate.probe(runtime_dir) == opstate.State()


def test_record_that_does_not_match_the_kernel_holder_is_not_trusted(runtime_dir: Path, procs: Procs) -> None:
    holder = procs.holder("backup", runtime_dir)
    _forge(runtime_dir, holder.pid, (proc.start_time(holder.pid) or 0) + 1, operation="upgrade")
    state = opstate.probe(runtime_dir)
    assert (state.in_progress, state.pid, state.operation, state.since) == (True, holder.pid, "", None)
    assert state.describe() == f"an operation is in progress (pid {holder.pid} {proc.command_name(holder.pid)})"


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"operation": "upgrade"}', b"\xff\xfe"])
def test_garbage_record_is_ignored(runtime_dir: Path, procs: Procs, content: bytes) -> None:
    holder = procs.holder("backup", runtime_dir)
    (runtime_dir / RECORD_NAME).write_bytes(content)
    state = opstate.probe(runtime_dir)
    assert (state.in_progress, state.pid, state.operation) == (True, holder.pid, "")


def test_bad_kind_is_refused_listing_the_valid_ones(runtime_dir: Path) -> None:
    with pytest.raises(opstate.InvalidKind, match="valid operations are backup, restore, upgrade"), \
            opstate.operation("reboot", runtime_dir=runtime_dir):
        pass
    assert not runtime_dir.exists()


def test_nested_same_kind_joins_and_other_kind_fails_at_once(runtime_dir: Path) -> None:
    with opstate.operation("upgrade", runtime_dir=runtime_dir) as outer:
        assert os.environ["OPSTATE_HELD"] == f"upgrade:{os.getpid()}"
        with opstate.operation("upgrade", runtime_dir=runtime_dir, wait=None) as inner:
            assert inner == outer
        assert opstate.probe(runtime_dir) == outer, "leaving the joined block must not release"
        with pytest.raises(opstate.Busy, match="nested operations must be of the same kind"), \
                opstate.operation("backup", runtime_dir=runtime_dir, wait=None):
            pass
    assert "OPSTATE_HELD" not in os.environ
    assert not opstate.probe(runtime_dir).in_progress


def test_stale_held_variable_does_not_bypass_the_lock(runtime_dir: Path, procs: Procs,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    holder = procs.holder("upgrade", runtime_dir)
    monkeypatch.setenv("OPSTATE_HELD", f"upgrade:{holder.pid}")  # not our ancestor
    with pytest.raises(opstate.Busy), opstate.operation("upgrade", runtime_dir=runtime_dir):
        pass


def test_runtime_dir_is_private(runtime_dir: Path) -> None:
    with opstate.operation("backup", runtime_dir=runtime_dir):
        assert runtime_dir.stat().st_mode & 0o777 == 0o750
        assert (runtime_dir / "operation.lock").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o1777])
def test_writable_runtime_dir_is_refused(runtime_dir: Path, mode: int) -> None:
    runtime_dir.mkdir()
    runtime_dir.chmod(mode)
    with pytest.raises(opstate.RuntimeDirError, match="lets others write"), \
            opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    assert list(runtime_dir.iterdir()) == []


def test_runtime_dir_owned_by_another_user_is_refused(runtime_dir: Path) -> None:
    runtime_dir.mkdir(mode=0o750)
    os.chown(runtime_dir, 65534, 65534)
    with pytest.raises(opstate.RuntimeDirError, match="owned by uid 65534"), \
            opstate.operation("backup", runtime_dir=runtime_dir):
        pass


def test_symlinked_lock_file_is_refused(runtime_dir: Path, base_dir: Path) -> None:
    runtime_dir.mkdir(mode=0o750)
    target = base_dir / "elsewhere"
    target.write_text("")
    (runtime_dir / "operation.lock").symlink_to(target)
    with pytest.raises(opstate.RuntimeDirError,
                       match=r"^cannot open lock file .*: it is a symbolic link; remove it$"), \
            opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    assert (runtime_dir / "operation.lock").is_symlink() and target.read_text() == ""
    assert sorted(p.name for p in runtime_dir.iterdir()) == ["operation.lock"]


def test_fifo_lock_file_is_refused(runtime_dir: Path) -> None:
    runtime_dir.mkdir(mode=0o750)
    os.mkfifo(runtime_dir / "operation.lock", 0o640)
    with pytest.raises(opstate.RuntimeDirError, match=r"^lock file .* is not a regular file; remove it$"), \
            opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    assert sorted(p.name for p in runtime_dir.iterdir()) == ["operation.lock"]
    assert opstate.probe(runtime_dir) == opstate.State()


def test_failed_record_write_releases_the_lock_and_leaves_no_half_record(runtime_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("opstate.record.os.write", full)
    with pytest.raises(opstate.RuntimeDirError, match="No space left on device"), \
            opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    monkeypatch.undo()
    assert sorted(p.name for p in runtime_dir.iterdir()) == ["operation.lock"]
    assert not opstate.probe(runtime_dir).in_progress


def test_waiting_costs_no_cpu(runtime_dir: Path, procs: Procs) -> None:
    procs.holder("backup", runtime_dir)
    before = time.thread_time()
    with pytest.raises(opstate.Busy), opstate.operation("upgrade", runtime_dir=runtime_dir, wait=1.5):
        pass
    assert time.thread_time() - before < 0.05, "the waiter must sleep, not spin"


def test_lock_fd_is_not_inherited_by_children(runtime_dir: Path) -> None:
    with opstate.operation("backup", runtime_dir=runtime_dir):
        lock_inode = (runtime_dir / "operation.lock").stat().st_ino
        child = "import os\nfor fd in range(64):\n  try: print(os.fstat(fd).st_ino)\n  except OSError: pass"
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.split()
        assert out, "the child listed no descriptors"
        assert str(lock_inode) not in out


def test_another_thread_of_the_holder_does_not_join(runtime_dir: Path) -> None:
    outcome: list[str] = []
    with opstate.operation("backup", runtime_dir=runtime_dir):
        def other() -> None:
            try:
                with opstate.operation("backup", runtime_dir=runtime_dir, wait=0.3):
                    outcome.append("joined")
            except opstate.Busy:
                outcome.append("busy")
        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=5)
        assert outcome == ["busy"], "a thread that may outlive the holder's block must not run unlocked"
    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=5)
    assert outcome == ["busy", "joined"]


def test_lock_on_a_replaced_file_is_retaken_on_the_new_one(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with opstate.operation("backup", runtime_dir=runtime_dir):
        pass
    lock = runtime_dir / "operation.lock"
    real_open = opstate.lock.runtime.open_lock_file
    opened: list[int] = []

    def open_then_replace(directory: Path) -> int:
        fd = real_open(directory)
        if not opened:  # the first descriptor ends up on an inode that is no longer the lock file
            lock.rename(runtime_dir / "old.lock")
            lock.touch(mode=0o640)
        opened.append(fd)
        return fd

    monkeypatch.setattr("opstate.lock.runtime.open_lock_file", open_then_replace)
    with opstate.operation("upgrade", runtime_dir=runtime_dir):
        assert len(opened) == 2
        assert opstate.probe(runtime_dir).operation == "upgrade"
        assert os.fstat(opened[1]).st_ino == lock.stat().st_ino


def test_unknown_group_is_refused_before_anything_is_created(runtime_dir: Path) -> None:
    with pytest.raises(opstate.RuntimeDirError, match="unknown group 'no-such-group'"), \
            opstate.operation("backup", runtime_dir=runtime_dir, group="no-such-group"):
        pass
    assert not runtime_dir.exists()
