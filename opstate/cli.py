# SPDX-License-Identifier: MIT
"""The ``opstate`` command: ``run`` an operation, ask its ``status``, ``wait`` for or ``watch`` it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import NoReturn

from opstate import runtime
from opstate.errors import Busy, Error, InvalidKind, RuntimeDirError, Unavailable
from opstate.lock import check_kind, held_by_ancestor, operation
from opstate.names import EX_TEMPFAIL, KINDS
from opstate.state import State, format_duration, probe

__all__ = ["main"]

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_NOPERM = 77
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """Bad command-line words: exit 64 with the message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {text!r}")
    return value


def _exit_code(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"an exit code is a number from 0 to 255, not {text!r}")
    return int(text)


def _descriptor(text: str) -> int:
    if not text.isdigit() or int(text) < 3:
        raise argparse.ArgumentTypeError(f"not an open descriptor number above 2: {text!r}")
    try:
        os.fstat(int(text))
    except OSError:
        raise argparse.ArgumentTypeError(f"descriptor {text} is not open") from None
    return int(text)


def _say(message: str) -> None:
    print(f"opstate: {message}", file=sys.stderr, flush=True)


def _print_state(state: State, as_json: bool) -> None:
    print(json.dumps(state.to_json()) if as_json else state.describe(), flush=True)


def _cmd_status(args: argparse.Namespace) -> int:
    if args.direct:
        state = probe(args.runtime_dir)
    else:
        from opstate import client  # the D-Bus stack is loaded only by the commands that use it

        state = client.get_state(args.bus)
    _print_state(state, args.json)
    return EX_OK


def _inside_own_operation(runtime_dir: str | None) -> State | None:
    """The operation this process runs inside, if $OPSTATE_HELD names a live ancestor holder."""
    try:
        return held_by_ancestor(runtime.resolve(runtime_dir))
    except Error:
        return None


def _cmd_wait(args: argparse.Namespace) -> int:
    from opstate.client import StateWatcher

    own = _inside_own_operation(args.runtime_dir)
    if own is not None:
        _say(f"cannot wait: this process runs inside {own.describe()}, which cannot end while we wait")
        return EX_TEMPFAIL
    with StateWatcher(args.bus) as watcher:
        try:
            watcher.wait_for(lambda s: s is None or not s.in_progress, args.timeout)
        except TimeoutError as exc:
            _say(f"gave up waiting after {format_duration(args.timeout)}: {exc}")
            return EX_TEMPFAIL
        watcher.get()  # unknown is not idle: raises Unavailable if the daemon is gone
    return EX_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from opstate.client import StateWatcher

    def show(state: State | None) -> None:
        if state is None:
            print(json.dumps({"inProgress": None}) if args.json else "unknown: the daemon is not reachable",
                  flush=True)
        else:
            _print_state(state, args.json)

    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the watcher's thread starts, so it inherits it
    with StateWatcher(args.bus, on_change=show):
        signal.sigwait(stop)
    return EX_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    from opstate import daemon

    argv = ["--log-level", args.log_level]
    for flag, value in (("--bus", args.bus), ("--runtime-dir", args.runtime_dir), ("--group", args.group)):
        if value:
            argv += [flag, value]
    return daemon.main(argv)


def _cmd_rest(args: argparse.Namespace) -> int:
    import ipaddress
    import logging
    from pathlib import Path

    from opstate import auth, hooks, rest
    from opstate.client import StateWatcher
    from opstate.daemon import setup_logging

    if args.users is None:
        raise UsageError("opstate rest: --users FILE is required (there is no built-in user); "
                         "create one with: opstate rest passwd USER --users FILE")
    if args.words[:1] == ["passwd"] and len(args.words) == 2:
        users = auth.Users(Path(args.users))
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else __import__("getpass").getpass()
        try:
            users.set_password(args.words[1], password)
        except ValueError as exc:  # a bad name or an empty password; Error (cannot write) goes to main()
            raise UsageError(f"opstate rest passwd: {exc}") from None
        _say(f"password of {args.words[1]} set in {args.users}")
        return EX_OK
    if args.words:
        raise UsageError("opstate rest: usage: opstate rest [passwd USER] --users FILE [options]")
    if (args.cert is None) != (args.key is None):
        raise UsageError("opstate rest: --cert and --key go together")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise UsageError(f"opstate rest: --host takes an IP address, not {host!r}") from None
    if args.cert is None and not loopback:
        raise UsageError(f"opstate rest: plain HTTP is only served on loopback; give --cert and --key for {host}")
    users = auth.Users(Path(args.users))
    if not users:
        raise Error(f"no users in {args.users}; add one with: opstate rest passwd USER --users {args.users}")
    setup_logging("INFO", "opstate-rest")
    logging.getLogger("opstate.rest").info("users from %s", args.users)
    hook_runner = hooks.load(Path(args.hooks) if args.hooks else None, args.runtime_dir)
    with StateWatcher(args.bus) as watcher:
        app = rest.create_app(watcher, users, hook_runner, secure=args.cert is not None,
                              idle_timeout=args.session_idle_timeout)
        rest.serve(app, host, args.port, args.cert, args.key)
    return EX_OK


def _forward_signals(child: subprocess.Popen[bytes]) -> dict[int, Callable[..., object] | int | None]:
    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    return {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}


def _die_with_us() -> Callable[[], None]:
    """A preexec_fn that has the kernel SIGKILL the command if we die (PR_SET_PDEATHSIG, prctl(2)).

    Our death releases the lock; a command that ran on would then overlap the next operation.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died before the prctl took effect
            os._exit(128 + signal.SIGKILL)

    return preexec


def _cmd_run(args: argparse.Namespace) -> int:
    kind = check_kind(args.kind)
    command = args.command

    def report(state: State, waited: float) -> None:
        _say(f"waiting to start {kind} for {format_duration(waited)}: {state.describe()}")

    with operation(kind, wait=args.wait, runtime_dir=args.runtime_dir,
                   command=os.path.basename(command[0]), on_wait=report):
        if args.ready_fd is not None:
            # Tell whoever started us that the lock is ours, and keep the descriptor from CMD.
            with suppress(BrokenPipeError):  # whoever waited has gone; the operation goes on
                os.write(args.ready_fd, b"locked\n")
            os.close(args.ready_fd)
        try:
            child = subprocess.Popen(command, preexec_fn=_die_with_us())
        except OSError as exc:
            _say(f"cannot run {command[0]}: {exc.strerror}")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        previous = _forward_signals(child)
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--runtime-dir", metavar="DIR",
                        help="where the lock lives (default $OPSTATE_RUNTIME_DIR or /run/opstate)")
    parser = _Parser(prog="opstate", description="Run and observe backup, restore and upgrade operations.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run a command while holding the operation lock",
                         usage="opstate run KIND [--wait[=SECONDS]] [--conflict-exit-code N] -- CMD [ARGS...]")
    run.add_argument("kind", metavar="KIND", help=f"one of {', '.join(KINDS)}")
    run.add_argument("--wait", nargs="?", type=_seconds, const=None, default=0.0, metavar="SECONDS",
                     help="wait for a running operation to end (forever, or up to SECONDS)")
    run.add_argument("--conflict-exit-code", type=_exit_code, default=EX_TEMPFAIL, metavar="N",
                     help="exit code when another operation is in progress (default 75)")
    run.add_argument("--ready-fd", type=_descriptor, metavar="FD",
                     help="write 'locked' to descriptor FD once the lock is taken, then close it")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", parents=[common], help="say whether an operation is in progress")
    status.add_argument("--json", action="store_true", help="print JSON with camelCase keys")
    status.add_argument("--direct", action="store_true", help="read the lock itself instead of asking the daemon")
    status.add_argument("--bus", help="system, session or a D-Bus address (default $OPSTATE_BUS or system)")
    status.set_defaults(func=_cmd_status)

    wait = sub.add_parser("wait", parents=[common], help="block until no operation is in progress")
    wait.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up (exit 75) after SECONDS")
    wait.add_argument("--bus", help="system, session or a D-Bus address")
    wait.set_defaults(func=_cmd_wait)

    watch = sub.add_parser("watch", parents=[common], help="print one line per state change until interrupted")
    watch.add_argument("--json", action="store_true", help="print JSON lines")
    watch.add_argument("--bus", help="system, session or a D-Bus address")
    watch.set_defaults(func=_cmd_watch)

    rest = sub.add_parser("rest", parents=[common], help="serve the LineRate REST API (or: rest passwd USER)")
    rest.add_argument("words", nargs="*", metavar="passwd USER", help="set USER's password (read from stdin)")
    rest.add_argument("--host", default="127.0.0.1")
    rest.add_argument("--port", type=int, default=8443)
    rest.add_argument("--cert", help="TLS certificate (PEM); with --key, serve HTTPS")
    rest.add_argument("--key", help="TLS private key (PEM)")
    rest.add_argument("--users", metavar="FILE", help="users file (written by opstate rest passwd)")
    rest.add_argument("--hooks", metavar="FILE", help="JSON: exec node (backup/home, ...) -> argv")
    rest.add_argument("--session-idle-timeout", type=_seconds, default=900.0, metavar="SECONDS")
    rest.add_argument("--bus", help="system, session or a D-Bus address")
    rest.set_defaults(func=_cmd_rest)

    daemon = sub.add_parser("daemon", parents=[common], help="run the daemon (same as opstated)")
    daemon.add_argument("--bus", help="system, session or a D-Bus address (default $OPSTATE_BUS or system)")
    daemon.add_argument("--group", help="group owning a runtime directory the daemon creates")
    daemon.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    daemon.set_defaults(func=_cmd_daemon)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    words, command = argv, []
    if argv[:1] == ["run"]:
        if "--" not in argv:
            raise UsageError("opstate run: missing '--' before the command: "
                             "opstate run KIND [--wait[=SECONDS]] -- CMD [ARGS...]")
        cut = argv.index("--")
        words, command = argv[:cut], argv[cut + 1 :]
        if not command:
            raise UsageError("opstate run: no command after '--'")
    args = _parser().parse_args(words)
    args.command = command
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the ``opstate`` command with ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        return int(args.func(args))
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    except InvalidKind as exc:
        _say(str(exc))
        return EX_USAGE
    except Busy as exc:
        _say(str(exc))
        return int(getattr(args, "conflict_exit_code", EX_TEMPFAIL))
    except Unavailable as exc:
        _say(f"{exc}; check it with: systemctl status opstate")
        return EX_UNAVAILABLE
    except RuntimeDirError as exc:
        _say(str(exc))
        return EX_NOPERM if isinstance(exc.__cause__, PermissionError) else EX_OSERR
    except Error as exc:
        _say(str(exc))
        return EX_OSERR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
