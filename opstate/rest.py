# SPDX-License-Identifier: MIT
"""A LineRate-compatible REST layer: the in-progress node, login, and the exec nodes.

Answers follow the LineRate REST API reference (see README): the node path is the first key of a
success envelope, errors come in the ``httpResponseCode``/``internalResponseCode`` envelope. The
in-progress node is served from a :class:`opstate.client.StateWatcher`'s current state, so a GET costs
no D-Bus round trip, and a state that is unknown answers 503, never 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opstate.auth import LoginThrottle, Sessions, Users
from opstate.errors import Busy, Error, Unavailable
from opstate.hooks import NODES, BadData, Hooks, NotConfigured
from opstate.state import State

__all__ = ["IN_PROGRESS", "create_app"]

log = logging.getLogger("opstate.rest")

API = "/lrs/api/v1.0"
IN_PROGRESS = "/status/system/config/backupRestoreUpgradeInProgress"
DETAIL = "/status/system/config/backupRestoreUpgradeDetail"
EXEC = "/exec/system/util"
COOKIE = "connect.sid"
MAX_BODY = 16 * 1024

# internalResponseCode: 101 "Path not found" is the reference's; the others are ours, one per failure.
_INTERNAL = {400: (102, "Bad request"), 401: (103, "Not authenticated"), 404: (101, "Path not found"),
             405: (104, "Method not allowed"), 409: (105, "Operation in progress"), 413: (106, "Request too large"),
             429: (107, "Too many failed logins"), 500: (108, "Internal error"), 501: (110, "Not configured"),
             503: (109, "State unknown")}


@dataclass(frozen=True)
class Leaf:
    """A leaf node: its LineRate type, a reader (GET) and/or the exec node it runs (PUT)."""

    type: str
    read: Callable[[], Any] | None = None
    exec_node: str | None = None

    @property
    def methods(self) -> list[str]:
        return ["GET"] if self.read else ["PUT"]


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _meta(num_children: int, type_: str) -> dict[str, Any]:
    return {"default": False, "defaultAllowed": False, "deleteAllowed": False, "numChildren": num_children,
            "type": type_}


def leaf_envelope(path: str, data: Any, type_: str) -> dict[str, Any]:
    """The success envelope of a GET on a leaf, keys in the reference's order."""
    return {path: {"data": data, **_meta(0, type_)}, "httpResponseCode": 200, "recurse": False, "requestPath": path}


def error(path: str, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """An error in the LineRate envelope."""
    internal, label = _INTERNAL[status]
    body = {"httpResponseCode": status, "internalResponseCode": internal,
            "message": f"Request failed: {detail} ResponseCode: {internal} ({label})\n",
            "recurse": False, "requestPath": path}
    return Response(_dumps(body), status, headers=headers, media_type="application/json")


class Tree:
    """The served nodes: leaves, and every prefix of a leaf path as a subtree."""

    def __init__(self, leaves: dict[str, Leaf]) -> None:
        self.leaves = leaves
        self.children: dict[str, list[str]] = {}
        for path in leaves:
            parts = path.split("/")
            for i in range(2, len(parts) + 1):
                parent, child = "/".join(parts[: i - 1]) or "/", "/".join(parts[:i])
                if parent != "/" and child not in self.children.setdefault(parent, []):
                    self.children[parent].append(child)
        for kids in self.children.values():
            kids.sort()

    def describe(self, path: str) -> dict[str, Any]:
        leaf = self.leaves.get(path)
        return _meta(0, leaf.type) if leaf else _meta(len(self.children[path]), "subtree")

    def get(self, path: str, op: str | None, recurse: bool) -> dict[str, Any]:
        """The GET answer for a subtree (``?op=list`` lists children, ``?level=recurse`` adds the leaves)."""
        node: dict[str, Any] = {"data": None, **self.describe(path)}
        if op == "list":
            node = {"children": {c: self.describe(c) for c in self.children[path]}, **node}
        answer: dict[str, Any] = {path: node}
        if recurse:
            for leaf_path in sorted(p for p in self.leaves if p.startswith(path + "/")):
                leaf = self.leaves[leaf_path]
                if leaf.read:
                    answer[leaf_path] = {"data": leaf.read(), **_meta(0, leaf.type)}
        return {**answer, "httpResponseCode": 200, "recurse": recurse, "requestPath": path}


def create_app(watcher: Any, users: Users, hooks: Hooks, *, secure: bool = False,
               idle_timeout: float = 900.0) -> Any:
    """Build the ASGI app. ``watcher`` offers ``get() -> State`` (raising Unavailable when unknown)."""
    sessions = Sessions(idle_timeout)
    throttle = LoginThrottle()
    cookie_flags = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    # The hot node's two possible answers, serialised once.
    in_progress_bodies = {v: _dumps(leaf_envelope(IN_PROGRESS, v, "uint32")) for v in (0, 1)}

    def detail() -> dict[str, Any]:
        state: State = watcher.get()
        return {**state.to_json(), "lastResults": {n: r.to_json() for n, r in sorted(hooks.results.items())}}

    leaves = {IN_PROGRESS: Leaf("uint32", lambda: int(watcher.get().in_progress)), DETAIL: Leaf("json", detail)}
    leaves.update({f"{EXEC}/{node}": Leaf(type_, exec_node=node) for node, (_, type_) in NODES.items()})
    tree = Tree(leaves)

    async def read_body(request: Request, path: str) -> bytes | Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            return error(path, 413, f"body over {MAX_BODY} bytes.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return error(path, 413, f"body over {MAX_BODY} bytes.")
        return body

    async def api(request: Request) -> Response:
        path = "/" + request.path_params["path"].strip("/")
        if sessions.touch(request.cookies.get(COOKIE)) is None:
            return error(path, 401, "not logged in or session expired; POST /login first.")
        try:
            return await dispatch(request, path)
        except Unavailable as exc:
            return error(path, 503, f"{exc}.")

    async def dispatch(request: Request, path: str) -> Response:
        if path not in tree.leaves and path not in tree.children:
            return error(path, 404, f"{path} does not exist.")
        leaf = tree.leaves.get(path)
        allowed = leaf.methods if leaf else ["GET"]
        if request.method not in allowed:
            return error(path, 405, f"{request.method} is not allowed on {path}.", {"Allow": ", ".join(allowed)})
        if leaf is None:
            recurse = request.query_params.get("level") == "recurse"
            return Response(_dumps(tree.get(path, request.query_params.get("op"), recurse)),
                            media_type="application/json")
        if leaf.read is not None:
            return Response(_dumps(leaf_envelope(path, leaf.read(), leaf.type)), media_type="application/json")
        return await put_exec(request, path, leaf)

    async def put_exec(request: Request, path: str, leaf: Leaf) -> Response:
        body = await read_body(request, path)
        if isinstance(body, Response):
            return body
        try:
            payload = json.loads(body)
        except ValueError:
            return error(path, 400, "the body is not valid JSON.")
        if not isinstance(payload, dict) or "data" not in payload:
            return error(path, 400, 'expected {"data": ..., "type": ..., "default": false}.')
        if payload.get("type", leaf.type) != leaf.type or (leaf.type == "string"
                                                           and not isinstance(payload["data"], str)):
            return error(path, 400, f"{path} takes data of type {leaf.type}.")
        if payload.get("default") not in (None, False):
            return error(path, 400, f"{path} has no default; send \"default\": false.")
        assert leaf.exec_node is not None
        try:
            started = await hooks.start(leaf.exec_node, payload["data"])
        except Busy as exc:
            return error(path, 409, f"{exc}.")
        except NotConfigured as exc:
            return error(path, 501, f"{exc}.")
        except BadData as exc:
            return error(path, 400, f"{exc}.")
        except Error as exc:
            return error(path, 500, f"{exc}.")
        # Read-your-writes: answer once the node itself says 1, so a GET right after the PUT agrees.
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: watcher.wait_for(
                lambda s: s is None or s.pid == started.pid or started.exit_code is not None, 1.0))
        except TimeoutError:
            log.warning("%s: the daemon did not report the operation within 1 s", path)
        return Response(_dumps({"httpResponseCode": 200, "requestPath": path, "recurse": False}),
                        media_type="application/json")

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else "?"
        as_json = request.headers.get("content-type", "").startswith("application/json")
        body = await read_body(request, "/login")
        if isinstance(body, Response):
            return body
        if not throttle.attempt(address):
            return error("/login", 429, "too many failed logins from this address; wait a minute.",
                         {"Retry-After": str(int(throttle.window))})
        try:
            fields = json.loads(body) if as_json else {k: v[0] for k, v in parse_qs(body.decode()).items()}
            user, password = fields.get("username"), fields.get("password")
        except (ValueError, AttributeError):
            user = password = None
        if not isinstance(user, str) or not isinstance(password, str):
            user = password = ""
        # scrypt takes tens of milliseconds: keep it off the event loop.
        if not user or not await asyncio.get_running_loop().run_in_executor(None, users.check, user, password):
            log.warning("failed login for %r from %s", user, address)
            if as_json:
                return error("/login", 401, "wrong user name or password.")
            return Response(status_code=302, headers={"Location": "/login"})
        throttle.succeeded(address)
        sid = sessions.create(user)
        headers = {"Set-Cookie": f"{COOKIE}={sid}{cookie_flags}"}
        if as_json:
            return Response(_dumps({"httpResponseCode": 200, "user": user}), 200, headers=headers,
                            media_type="application/json")
        return Response(status_code=302, headers={**headers, "Location": "/"})

    async def logout(request: Request) -> Response:
        sessions.end(request.cookies.get(COOKIE))
        return Response(status_code=302, headers={"Location": "/login",
                                                  "Set-Cookie": f"{COOKIE}=; Max-Age=0{cookie_flags}"})

    async def not_found(request: Request) -> Response:
        return error(request.url.path, 404, f"{request.url.path} does not exist.")

    methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(routes=[
        Route(API + "/{path:path}", api, methods=methods),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST", "GET"]),
        Route("/{path:path}", not_found, methods=methods),
    ])
    return _FastNode(app, sessions, watcher, in_progress_bodies)


class _FastNode:
    """ASGI wrapper that answers the hot GET of the in-progress node itself and hands all else on.

    It does exactly what ``api`` does for that request (session check, current state, the same
    bytes), minus Starlette's routing and request objects, which cost a third of the throughput.
    """

    _PATH = API + IN_PROGRESS

    def __init__(self, app: Starlette, sessions: Sessions, watcher: Any, bodies: dict[int, bytes]) -> None:
        self.app, self.sessions, self.watcher = app, sessions, watcher
        self.responses = {v: ([(b"content-type", b"application/json"), (b"content-length", str(len(b)).encode())], b)
                          for v, b in bodies.items()}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self._PATH or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        sid = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    key, _, val = part.strip().partition("=")
                    if key == COOKIE:
                        sid = val
        state = self.watcher.current
        if self.sessions.touch(sid) is None or state is None:
            return await self.app(scope, receive, send)  # the slow path words the 401 or 503
        headers, body = self.responses[int(state.in_progress)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def serve(app: Starlette, host: str, port: int, cert: str | None, key: str | None) -> None:
    """Serve ``app`` with uvicorn (httptools, uvloop) until SIGINT/SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=cert, ssl_keyfile=key, loop="uvloop",
                            http="httptools", access_log=False, log_level="warning", lifespan="off")
    log.info("serving the LineRate REST API on %s://%s:%d%s", "https" if cert else "http", host, port, API)
    started = time.monotonic()
    uvicorn.Server(config).run()
    log.info("stopped after %.0f s", time.monotonic() - started)
