# SPDX-License-Identifier: MIT
"""Everything D-Bus and GLib, and the only module that imports them.

Server side: :class:`OpStateInterface`, a thin adapter that publishes the daemon's state (its
introspection XML is the ``dbus`` class attribute), and :class:`EventLoop`, the GLib main loop the
daemon runs on. Client side: :func:`read_state` and :func:`subscribe`, on raw Gio calls (pydbus
proxies introspect first and build a Variant per call, which costs a round trip and ~2x the time).
Errors cross the bus as ``org.opstate.OpState1.Error.*`` and become typed exceptions again here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pydbus
from gi.repository import Gio, GLib

from opstate import errors, monitor
from opstate.errors import Unavailable
from opstate.names import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH
from opstate.state import State

__all__ = [
    "Connection",
    "EventLoop",
    "OpStateInterface",
    "Publication",
    "Subscription",
    "connect",
    "disconnect",
    "read_state",
    "subscribe",
]

log = logging.getLogger(__name__)

Connection = Any  # a pydbus Bus; pydbus has no type hints
PROPERTIES = "org.freedesktop.DBus.Properties"
CALL_TIMEOUT_MS = 3000
# The bus told us the daemon is not there (or not answering): the state is unknown, not idle.
_UNREACHABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.TimedOut", "org.freedesktop.DBus.Error.Timeout",
}
# The errors the daemon can send, by D-Bus name; each is rebuilt from its message.
_ERRORS: dict[str, type[errors.Error]] = {cls.dbus_error_name: cls for cls in (errors.Error, errors.RuntimeDirError)}


def connect(spec: str) -> Connection:
    """Connect to ``system``, ``session`` or a D-Bus address; raise :class:`Unavailable` if we cannot."""
    try:
        if spec == "system":
            bus = pydbus.SystemBus()
        elif spec == "session":
            bus = pydbus.SessionBus()
        else:
            bus = pydbus.connect(spec)
    except GLib.Error as exc:
        raise Unavailable(f"cannot connect to the {spec} bus: {exc.message}") from exc
    # The shared system/session connections raise SIGTERM when the bus goes away; we decide ourselves.
    bus.con.set_exit_on_close(False)
    return bus


def disconnect(bus: Connection, spec: str) -> None:
    """Close a connection made to an address; the shared system and session connections stay open."""
    if spec not in ("system", "session"):
        bus.con.close_sync(None)


def _variants(state: State) -> dict[str, GLib.Variant]:
    return {
        "InProgress": GLib.Variant("u", int(state.in_progress)),
        "Operation": GLib.Variant("s", state.operation),
        "HolderPid": GLib.Variant("u", state.pid),
        "HolderUid": GLib.Variant("u", state.uid),
        "Since": GLib.Variant("t", 0 if state.since is None else round(state.since * 1_000_000)),
        "Command": GLib.Variant("s", state.command),
    }


def _state(snapshot: GLib.Variant) -> State:
    """Read a State from an ``a{sv}`` snapshot; KeyError if it lacks a property.

    Looked up value by value: ``Variant.unpack()`` of the whole dictionary costs five times as much.
    """

    def value(name: str, type_: str) -> Any:
        found = snapshot.lookup_value(name, GLib.VariantType(type_))
        if found is None:
            raise KeyError(name)
        return found.unpack()

    since = value("Since", "t")
    return State(bool(value("InProgress", "u")), value("Operation", "s"), value("HolderPid", "u"),
                 value("HolderUid", "u"), since / 1_000_000 if since else None, value("Command", "s"))


class OpStateInterface:
    """The published object: properties and signals mirror the daemon's state, nothing more.

    Registered with Gio directly rather than through pydbus's wrapper, which builds every reply
    Variant anew and names errors ``unknown.<ClassName>``: replies here are built once per state.
    """

    dbus = f"""<node>
  <interface name="{INTERFACE}">
    <property name="InProgress" type="u" access="read"/>
    <property name="Operation" type="s" access="read"/>
    <property name="HolderPid" type="u" access="read"/>
    <property name="HolderUid" type="u" access="read"/>
    <property name="Since" type="t" access="read"/>
    <property name="Command" type="s" access="read"/>
    <method name="GetState">
      <arg name="state" type="a{{sv}}" direction="out"/>
    </method>
    <signal name="Started">
      <arg name="operation" type="s"/>
      <arg name="pid" type="u"/>
    </signal>
    <signal name="Finished">
      <arg name="operation" type="s"/>
      <arg name="pid" type="u"/>
      <arg name="how" type="s"/>
    </signal>
  </interface>
</node>"""

    def __init__(self, source: Callable[[], State]) -> None:
        self._source = source
        self._cached: tuple[State, dict[str, GLib.Variant], GLib.Variant] | None = None
        self._connection: Any = None

    def _snapshot(self) -> tuple[dict[str, GLib.Variant], GLib.Variant]:
        state = self._source()
        if self._cached is None or self._cached[0] != state:
            values = _variants(state)
            self._cached = (state, values, GLib.Variant("(a{sv})", (values,)))
        return self._cached[1], self._cached[2]

    def _method_call(self, _con: Any, _sender: str, _path: str, iface: str, method: str, params: Any,
                     invocation: Any) -> None:
        # Gio has checked the member, the signature and (for Properties) that the property exists and
        # may be read or written, so only reads reach us.
        try:
            values, reply = self._snapshot()
            if iface == INTERFACE and method == "GetState":
                invocation.return_value(reply)
            elif method == "Get":
                invocation.return_value(GLib.Variant("(v)", (values[params.unpack()[1]],)))
            elif method == "GetAll":
                invocation.return_value(GLib.Variant("(a{sv})", (values,)))
            else:
                invocation.return_dbus_error(f"{ERROR_PREFIX}.NotSupported", f"{iface}.{method} is not supported")
        except errors.Error as exc:
            invocation.return_dbus_error(exc.dbus_error_name, str(exc))
        except Exception as exc:
            log.exception("failed to answer %s.%s", iface, method)
            invocation.return_dbus_error("org.freedesktop.DBus.Error.Failed", str(exc))

    def register(self, connection: Any) -> int:
        """Export the object on ``connection`` (a Gio.DBusConnection); return the registration id."""
        self._connection = connection
        info = Gio.DBusNodeInfo.new_for_xml(self.dbus).interfaces[0]
        return int(connection.register_object(OBJECT_PATH, info, self._method_call, None, None))

    def _emit(self, member: str, signature: str, args: tuple[Any, ...], iface: str = INTERFACE) -> None:
        self._connection.emit_signal(None, OBJECT_PATH, iface, member, GLib.Variant(signature, args))

    def announce(self, old: State, new: State, events: list[monitor.Started | monitor.Finished]) -> None:
        """Emit Finished, then one PropertiesChanged carrying every property (a snapshot that a
        subscriber can use as it is), then Started."""
        for event in events:
            if isinstance(event, monitor.Finished):
                self._emit("Finished", "(sus)", (event.operation, event.pid, event.how))
        if old != new:
            self._emit("PropertiesChanged", "(sa{sv}as)", (INTERFACE, self._snapshot()[0], []), PROPERTIES)
        for event in events:
            if isinstance(event, monitor.Started):
                self._emit("Started", "(su)", (event.operation, event.pid))


class Publication:
    """Our object exported and the well-known name owned on ``bus``, until :meth:`close`."""

    def __init__(self, bus: Connection, interface: OpStateInterface) -> None:
        self._con = bus.con
        self._registration = interface.register(bus.con)
        try:
            self._name = bus.request_name(BUS_NAME, allow_replacement=False)
        except (RuntimeError, GLib.Error) as exc:
            self._con.unregister_object(self._registration)
            raise errors.Error(f"cannot own {BUS_NAME}: {exc}; is another opstate daemon running, and does "
                               "the D-Bus policy let this user own the name?") from exc

    def close(self) -> None:
        """Release the name and unexport the object."""
        self._name.unown()
        self._con.unregister_object(self._registration)


class EventLoop:
    """The daemon's GLib main loop. A callback that raises stops it with exit code 1."""

    def __init__(self) -> None:
        self._loop = GLib.MainLoop()
        self.exit_code = 0

    def _guard(self, callback: Callable[[], object], keep: bool) -> Callable[..., bool]:
        def run(*_args: object) -> bool:
            try:
                callback()
            except Exception:
                log.exception("internal error; exiting so that systemd restarts us")
                self.quit(1)
                return False
            return keep

        return run

    def watch_fd(self, fd: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` whenever ``fd`` is readable."""
        GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, fd, GLib.IOCondition.IN, self._guard(callback, True))

    def every(self, seconds: float, callback: Callable[[], object]) -> None:
        """Call ``callback`` every ``seconds``."""
        GLib.timeout_add(max(1, int(seconds * 1000)), self._guard(callback, True))

    def on_signal(self, signum: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` from the loop when the process gets ``signum``."""
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, self._guard(callback, True))

    def on_disconnect(self, bus: Connection, callback: Callable[[], object]) -> None:
        """Call ``callback`` if the bus connection closes."""
        bus.con.connect("closed", lambda *_: self._guard(callback, False)())

    def run(self) -> int:
        """Run until :meth:`quit`; return the exit code."""
        self._loop.run()
        return self.exit_code

    def quit(self, code: int = 0) -> None:
        """Stop the loop with ``code``."""
        self.exit_code = self.exit_code or code
        self._loop.quit()


def _raise_typed(exc: GLib.Error, spec: str) -> None:
    name = Gio.DBusError.get_remote_error(exc)
    if name is None or name in _UNREACHABLE:
        raise Unavailable(f"the opstate daemon ({BUS_NAME}) does not answer on the {spec} bus: "
                          f"{Gio.DBusError.strip_remote_error(exc) or exc.message}") from exc
    message = exc.message.split(": ", 1)[-1]
    raise _ERRORS.get(name, errors.Error)(message) from exc


def read_state(bus: Connection, spec: str) -> State:
    """Return the daemon's state in one round trip; raise :class:`Unavailable` if it does not answer."""
    try:
        reply = bus.con.call_sync(BUS_NAME, OBJECT_PATH, INTERFACE, "GetState", None,
                                  GLib.VariantType("(a{sv})"), Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None)
    except GLib.Error as exc:
        _raise_typed(exc, spec)
    return _state(reply.get_child_value(0))


class Subscription:
    """A thread running its own GLib loop that reports every state change of the daemon.

    ``on_state`` gets a :class:`State`, or None whenever the daemon (or the bus) is gone: unknown,
    never idle. Signals are matched on the well-known name, so the bus delivers only what the name's
    owner sends; a process that emits look-alike signals is not heard.
    """

    def __init__(self, spec: str, on_state: Callable[[State | None], None], retry_seconds: float = 1.0) -> None:
        self._spec = spec
        self._on_state = on_state
        self._retry_ms = int(retry_seconds * 1000)
        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._bus: Connection | None = None
        self._handles: list[int] = []
        self._closed_handler = 0
        self._thread = threading.Thread(target=self._run, name="opstate-subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._context.push_thread_default()
        self._attach()
        self._loop.run()
        self._context.pop_thread_default()

    def _attach(self) -> bool:
        try:
            bus = connect(self._spec)
        except Unavailable:
            self._on_state(None)
            self._retry()
            return False
        self._bus = bus
        con = bus.con
        self._handles = [
            con.signal_subscribe(BUS_NAME, PROPERTIES, "PropertiesChanged", OBJECT_PATH, INTERFACE,
                                 Gio.DBusSignalFlags.NONE, self._on_properties),
            con.signal_subscribe("org.freedesktop.DBus", "org.freedesktop.DBus", "NameOwnerChanged",
                                 "/org/freedesktop/DBus", BUS_NAME, Gio.DBusSignalFlags.NONE, self._on_owner),
        ]
        self._closed_handler = con.connect("closed", self._on_closed)
        self._reread()
        return False

    def _retry(self) -> None:
        source = GLib.timeout_source_new(self._retry_ms)
        source.set_callback(lambda *_: self._attach())
        source.attach(self._context)

    def _reread(self) -> None:
        # Asynchronous, so the reply is dispatched in order with the signals that follow it.
        assert self._bus is not None
        self._bus.con.call(BUS_NAME, OBJECT_PATH, INTERFACE, "GetState", None, GLib.VariantType("(a{sv})"),
                           Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None, self._on_reply)

    def _on_reply(self, con: Any, result: Any) -> None:
        try:
            state: State | None = _state(con.call_finish(result).get_child_value(0))
        except (GLib.Error, KeyError):
            state = None  # no owner now (NameOwnerChanged tells us when it returns), or a malformed answer
        self._on_state(state)

    def _on_properties(self, _con: Any, _sender: str, _path: str, _iface: str, _name: str, params: Any) -> None:
        try:
            self._on_state(_state(params.get_child_value(1)))
        except KeyError:  # not a full snapshot: ask for one
            self._reread()

    def _on_owner(self, _con: Any, _sender: str, _path: str, _iface: str, _name: str, params: Any) -> None:
        _name, _old, new = params.unpack()
        if new:
            self._reread()
        else:
            self._on_state(None)

    def _on_closed(self, *_args: object) -> None:
        self._detach()
        self._on_state(None)
        self._retry()

    def _detach(self) -> None:
        if self._bus is not None:
            con, self._bus = self._bus.con, None
            for handle in self._handles:
                con.signal_unsubscribe(handle)
            con.disconnect(self._closed_handler)

    def _stop(self) -> bool:
        bus = self._bus
        self._detach()
        if bus is not None:
            disconnect(bus, self._spec)
        self._loop.quit()
        return False

    def close(self) -> None:
        """Unsubscribe and stop the thread."""
        self._context.invoke_full(GLib.PRIORITY_HIGH, self._stop)
        self._thread.join(timeout=5)


def subscribe(spec: str, on_state: Callable[[State | None], None]) -> Subscription:
    """Start reporting the daemon's state to ``on_state`` (from a background thread)."""
    return Subscription(spec, on_state)
