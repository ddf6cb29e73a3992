# SPDX-License-Identifier: MIT
"""The exec nodes' hooks: each PUT runs its configured command as an operation, in the background.

The hook runs under ``opstate run KIND --ready-fd N -- ARGV... DATA`` in its own process, so the lock
is held by the process that runs the hook, never by the REST server: a crashed REST server leaves
no operation running unlocked. The data goes in as one argument and never through a shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opstate.errors import Busy, Error
from opstate.names import EX_TEMPFAIL
from opstate.state import State, probe

__all__ = ["NODES", "BadData", "HookResult", "Hooks", "NotConfigured", "load"]

log = logging.getLogger("opstate.hooks")

#: exec node (below /exec/system/util) -> (operation kind, LineRate data type)
NODES: dict[str, tuple[str, str]] = {
    "backup/home": ("backup", "string"),
    "backup/full": ("backup", "string"),
    "restore/home": ("restore", "string"),
    "restore/full": ("restore", "string"),
    "upgrade": ("upgrade", "json"),
}


class NotConfigured(Error):
    """The exec node has no hook in the hooks file."""


class BadData(Error):
    """The PUT's data cannot be handed to a hook as one argument."""


@dataclass
class HookResult:
    """What happened to the last run of a node's hook."""

    node: str
    pid: int
    started: float
    finished: float | None = None
    exit_code: int | None = None
    output: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The form served in the detail node."""
        return {"node": self.node, "pid": self.pid, "started": self.started, "finished": self.finished,
                "exitCode": self.exit_code, "output": self.output[-20:]}


class Hooks:
    """Starts hooks; remembers the last result of each node."""

    def __init__(self, commands: dict[str, list[str]], runtime_dir: str | None = None) -> None:
        self.commands = commands
        self.runtime_dir = runtime_dir
        self.results: dict[str, HookResult] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, node: str, data: Any) -> HookResult:
        """Run ``node``'s hook with ``data``; return once its lock is taken, or raise Busy/Error."""
        kind, data_type = NODES[node]
        argv = self.commands.get(node)
        if not argv:
            raise NotConfigured(f"no hook is configured for /exec/system/util/{node}; add it to the hooks file")
        argument = data if data_type == "string" else json.dumps(data)
        if argument.startswith("-") or "\0" in argument:
            raise BadData(f"data for {node} must not start with '-' or contain NUL: the hook gets it as an argument")
        try:
            argument.encode()
        except UnicodeEncodeError:
            raise BadData(f"data for {node} is not valid Unicode text") from None
        ready_r, ready_w = os.pipe()
        runner = [sys.executable, "-m", "opstate", "run", kind, "--ready-fd", str(ready_w)]
        if self.runtime_dir:
            runner += ["--runtime-dir", self.runtime_dir]
        try:
            proc = await asyncio.create_subprocess_exec(*runner, "--", *argv, argument, pass_fds=(ready_w,),
                                                        stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            os.close(ready_r)
            raise Error(f"cannot start the {node} hook: {exc}") from exc
        finally:
            os.close(ready_w)
        try:
            locked = await asyncio.get_running_loop().run_in_executor(None, os.read, ready_r, 16)
        finally:
            os.close(ready_r)
        if not locked:
            output = (await proc.communicate())[0].decode(errors="replace").strip()
            if proc.returncode == EX_TEMPFAIL:
                holder = probe(self.runtime_dir)
                raise Busy(kind, holder if holder.in_progress else State(True))
            raise Error(f"the {node} hook could not start (exit {proc.returncode}): {output}")
        result = HookResult(node, proc.pid, time.time())
        self.results[node] = result
        log.info("%s started (pid %d): %s", node, proc.pid, " ".join([*argv, argument]))
        task = asyncio.create_task(self._follow(proc, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return result

    @staticmethod
    def _output(result: HookResult, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        result.output = [*result.output[-199:], line]
        log.info("%s: %s", result.node, line)

    async def _follow(self, proc: asyncio.subprocess.Process, result: HookResult) -> None:
        # Read chunks, not lines: a line over the stream's limit must not stop us draining the pipe
        # (a hook blocked on a full pipe would hold the lock for ever).
        assert proc.stdout is not None
        pending = b""
        while chunk := await proc.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > 65536:
                lines, pending = [*lines, pending], b""
            for raw in lines:
                self._output(result, raw)
        if pending:
            self._output(result, pending)
        result.exit_code = await proc.wait()
        result.finished = time.time()
        level = logging.INFO if result.exit_code == 0 else logging.ERROR
        log.log(level, "%s finished with exit code %d", result.node, result.exit_code)


def load(path: Path | None, runtime_dir: str | None = None) -> Hooks:
    """Read the hooks file: a JSON object mapping exec nodes (``backup/home`` …) to argv lists."""
    if path is None:
        return Hooks({}, runtime_dir)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Error(f"cannot read hooks file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise Error(f"hooks file {path}: expected a JSON object of node -> argv")
    commands: dict[str, list[str]] = {}
    for node, argv in raw.items():
        if node not in NODES:
            raise Error(f"hooks file {path}: unknown node {node!r}; known: {', '.join(NODES)}")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise Error(f"hooks file {path}: {node} must be a non-empty list of strings")
        commands[node] = [str(path.parent.resolve() / a) if a.startswith("./") else a for a in argv]
    return Hooks(commands, runtime_dir)
