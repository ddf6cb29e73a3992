# SPDX-License-Identifier: MIT
"""``opstate run`` and ``opstate status --direct`` as outside processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Procs, opstate, wait_for

import opstate as lib

BUSY = re.compile(r"^opstate: cannot start backup: upgrade in progress \(pid (\d+) \S+, since \d\d:\d\d:\d\d, \d+s\)$")


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(opstate(*args), capture_output=True, text=True, timeout=30, **kw)  # type: ignore[call-overload]


def test_status_direct_idle_and_json(runtime_dir: Path) -> None:
    assert run("status", "--direct").stdout == "idle\n"
    assert json.loads(run("status", "--direct", "--json").stdout) == {
        "inProgress": 0, "operation": "", "pid": 0, "uid": 0, "since": None, "command": ""}


def test_hook_inside_run_sees_its_own_operation(runtime_dir: Path) -> None:
    hook = " ".join(opstate("status", "--direct")) + "; " + " ".join(opstate("status", "--direct", "--json"))
    result = run("run", "backup", "--", "sh", "-c", hook)
    assert result.returncode == 0, result.stderr
    human, as_json = result.stdout.splitlines()
    assert re.match(r"^backup in progress \(pid \d+ sh, since \d\d:\d\d:\d\d, \d+s\)$", human)
    data = json.loads(as_json)
    assert (data["inProgress"], data["operation"], data["command"]) == (1, "backup", "sh")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", data["since"])


def test_conflict_message_and_exit_codes(runtime_dir: Path, procs: Procs, base_dir: Path) -> None:
    marker = base_dir / "up"
    holder = procs.start(opstate("run", "upgrade", "--", "sh", "-c", f"touch {marker}; sleep 30"))
    wait_for(marker.exists, what="the upgrade to start")
    busy = run("run", "backup", "--", "true")
    assert busy.returncode == 75
    match = BUSY.match(busy.stderr.strip())
    assert match, busy.stderr
    assert int(match.group(1)) == holder.pid
    assert run("run", "backup", "--conflict-exit-code", "3", "--", "true").returncode == 3
    start = time.monotonic()
    waited = run("run", "backup", "--wait=1", "--", "true")
    assert waited.returncode == 75
    assert 0.9 <= time.monotonic() - start < 5


def test_exit_code_and_signal_pass_through(runtime_dir: Path) -> None:
    assert run("run", "restore", "--", "sh", "-c", "exit 7").returncode == 7
    assert run("run", "restore", "--", "sh", "-c", "kill -USR1 $$").returncode == 128 + signal.SIGUSR1
    assert run("run", "restore", "--", "/nonexistent/cmd").returncode == 127


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_are_forwarded_to_the_command(runtime_dir: Path, procs: Procs, base_dir: Path,
                                              sig: signal.Signals) -> None:
    got = base_dir / "got"
    script = f"trap 'echo {sig.name} > {got}; exit 9' {sig.name[3:]}; touch {base_dir}/ready; sleep 30 & wait"
    runner = procs.start(opstate("run", "upgrade", "--", "sh", "-c", script))
    wait_for((base_dir / "ready").exists, what="the command to start")
    runner.send_signal(sig)
    assert runner.wait(timeout=10) == 9
    assert got.read_text().strip() == sig.name
    assert not lib.probe(runtime_dir).in_progress


def test_wait_forever_starts_after_the_holder_and_reports_progress(runtime_dir: Path, procs: Procs,
                                                                   base_dir: Path) -> None:
    procs.holder("upgrade", runtime_dir, seconds=6)
    result = run("run", "backup", "--wait", "--", "true")
    assert result.returncode == 0
    assert re.search(r"waiting to start backup for \d+s: upgrade in progress \(pid \d+", result.stderr)


def test_background_child_does_not_keep_the_lock(runtime_dir: Path, base_dir: Path) -> None:
    result = run("run", "backup", "--", "sh", "-c", "sleep 30 >/dev/null 2>&1 &")
    assert result.returncode == 0
    try:
        assert not lib.probe(runtime_dir).in_progress
        assert run("run", "upgrade", "--", "true").returncode == 0
    finally:
        subprocess.run(["pkill", "-x", "-f", "sleep 30"], check=False)


@pytest.mark.parametrize("argv, message", [
    (["run", "reboot", "--", "true"], "unknown operation 'reboot': valid operations are backup, restore, upgrade"),
    (["run", "backup", "true"], "missing '--' before the command"),
    (["run", "backup", "--"], "no command after '--'"),
    (["run", "backup", "--wait=-1", "--", "true"], "seconds must be 0 or more"),
    (["run", "backup", "--wait=soon", "--", "true"], "not a number of seconds"),
    (["run", "backup", "--conflict-exit-code", "300", "--", "true"], "an exit code is a number from 0 to 255"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_64(runtime_dir: Path, argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 64
    assert message in result.stderr
    assert not runtime_dir.exists() or not lib.probe(runtime_dir).in_progress


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def test_nobody_cannot_open_take_or_fake_the_lock(runtime_dir: Path, base_dir: Path) -> None:
    with lib.operation("backup", runtime_dir=runtime_dir):
        pass  # creates the directory and the lock file as root
    lock = runtime_dir / "operation.lock"
    opened = subprocess.run([*NOBODY, "flock", "-n", str(lock), "true"], capture_output=True, text=True)
    assert opened.returncode != 0 and "Permission denied" in opened.stderr
    result = subprocess.run([*NOBODY, *opstate("run", "upgrade", "--", "true")], capture_output=True, text=True,
                            timeout=30, cwd=base_dir)
    assert result.returncode == 77
    assert "permission denied" in result.stderr and "only root may start an operation" in result.stderr
    forged = subprocess.run([*NOBODY, "sh", "-c", f"echo x > {runtime_dir}/holder.json"], capture_output=True)
    assert forged.returncode != 0
    assert not lib.probe(runtime_dir).in_progress
