# SPDX-License-Identifier: MIT
"""The LineRate REST layer as a process, exercised with curl."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Procs, opstate, wait_for
from services import Daemon, PrivateBus, RestServer

NODE = "/status/system/config/backupRestoreUpgradeInProgress"
API = "/lrs/api/v1.0"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


def curl(url: str, *args: str, jar: Path | None = None) -> Answer:
    argv = ["curl", "-s", "-k", "-D", "-", "--max-time", "15", url, *args]
    if jar is not None:
        argv += ["-b", str(jar), "-c", str(jar)]
    raw = subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body)


def seed(value: int) -> dict:  # type: ignore[type-arg]
    return {NODE: {"data": value, "default": False, "defaultAllowed": False, "deleteAllowed": False,
                   "numChildren": 0, "type": "uint32"},
            "httpResponseCode": 200, "recurse": False, "requestPath": NODE}


@pytest.fixture
def hooks_file(base_dir: Path) -> Path:
    script = base_dir / "hook.sh"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\necho "hook says hi"\nsleep "${HOOK_SLEEP:-2}"\n')
    script.chmod(0o755)
    path = base_dir / "hooks.json"
    path.write_text(json.dumps({node: [str(script), node] for node in
                                ("backup/home", "backup/full", "restore/home", "restore/full", "upgrade")}))
    return path


@pytest.fixture
def server(daemon: Daemon, bus: PrivateBus, runtime_dir: Path, base_dir: Path,
           hooks_file: Path) -> Iterator[RestServer]:
    s = RestServer(bus, runtime_dir, base_dir, hooks=hooks_file, extra=["--session-idle-timeout", "3"])
    yield s
    s.stop()


@pytest.fixture
def jar(server: RestServer, base_dir: Path) -> Path:
    path = base_dir / "jar"
    answer = curl(server.base + "/login", "-d", "username=demo&password=secret", jar=path)
    assert answer.status == 302
    return path


def test_node_equals_the_seed_for_0_and_1(server: RestServer, jar: Path, runtime_dir: Path, procs: Procs) -> None:
    idle = curl(server.base + API + NODE, jar=jar)
    assert idle.status == 200 and idle.headers["content-type"] == "application/json"
    assert idle.json() == seed(0)
    assert list(idle.json()) == list(seed(0)) and next(iter(idle.json())) == NODE
    assert list(idle.json()[NODE]) == list(seed(0)[NODE])
    assert b"false" in idle.body and b"False" not in idle.body
    runner = procs.start(opstate("run", "upgrade", "--", "sleep", "2"))
    wait_for(lambda: curl(server.base + API + NODE, jar=jar).json() == seed(1), timeout=2, what="data 1")
    assert runner.wait(timeout=10) == 0
    ended = time.monotonic()
    wait_for(lambda: curl(server.base + API + NODE, jar=jar).json() == seed(0), timeout=1, what="data 0")
    assert time.monotonic() - ended < 1


def test_login_form_and_json(server: RestServer, base_dir: Path) -> None:
    form = curl(server.base + "/login", "-d", "username=demo&password=secret")
    assert form.status == 302 and form.headers["location"] != "/login"
    cookie = form.headers["set-cookie"]
    assert cookie.startswith("connect.sid=") and "HttpOnly" in cookie and "SameSite" in cookie
    as_json = curl(server.base + "/login", "-H", "Content-Type: application/json",
                   "--data", json.dumps({"username": "demo", "password": "secret"}))
    assert as_json.status == 200 and as_json.headers["set-cookie"].startswith("connect.sid=")
    sid = as_json.headers["set-cookie"].split(";")[0]
    assert curl(server.base + API + NODE, "-H", f"Cookie: {sid}").status == 200
    wrong_form = curl(server.base + "/login", "-d", "username=demo&password=nope")
    assert (wrong_form.status, wrong_form.headers["location"]) == (302, "/login")
    assert "set-cookie" not in wrong_form.headers
    wrong_json = curl(server.base + "/login", "-H", "Content-Type: application/json",
                      "--data", json.dumps({"username": "demo", "password": "nope"}))
    assert wrong_json.status == 401 and "set-cookie" not in wrong_json.headers
    assert wrong_json.json()["httpResponseCode"] == 401


def test_no_cookie_expired_session_and_logout_get_401(server: RestServer, jar: Path, base_dir: Path) -> None:
    bare = curl(server.base + API + NODE)
    assert bare.status == 401 and bare.json()["requestPath"] == NODE
    assert curl(server.base + API + NODE, "-H", "Cookie: connect.sid=forged").status == 401
    assert curl(server.base + API + NODE, jar=jar).status == 200
    time.sleep(3.5)  # the server runs with --session-idle-timeout 3
    assert curl(server.base + API + NODE, jar=jar).status == 401
    other = base_dir / "jar2"
    curl(server.base + "/login", "-d", "username=demo&password=secret", jar=other)
    assert curl(server.base + API + NODE, jar=other).status == 200
    curl(server.base + "/logout", "-X", "POST", jar=other)
    assert curl(server.base + API + NODE, jar=other).status == 401


def test_failed_logins_are_rate_limited(server: RestServer) -> None:
    for _ in range(5):
        assert curl(server.base + "/login", "-d", "username=demo&password=nope").status == 302
    limited = curl(server.base + "/login", "-d", "username=demo&password=secret")
    assert limited.status == 429 and "set-cookie" not in limited.headers


def envelope(answer: Answer, status: int, internal: int | None = None) -> dict:  # type: ignore[type-arg]
    body = answer.json()
    assert answer.status == status == body["httpResponseCode"]
    assert set(body) == {"httpResponseCode", "internalResponseCode", "message", "recurse", "requestPath"}
    assert body["message"].startswith("Request failed: ") and body["message"].endswith(")\n")
    if internal is not None:
        assert body["internalResponseCode"] == internal
    return body  # type: ignore[no-any-return]


def test_errors_in_the_linerate_envelope(server: RestServer, jar: Path) -> None:
    missing = envelope(curl(server.base + API + "/status/system/nope", jar=jar), 404, 101)
    assert "(Path not found)" in missing["message"] and missing["requestPath"] == "/status/system/nope"
    for method in ("PUT", "POST", "DELETE"):
        refused = curl(server.base + API + NODE, "-X", method, "--data", "{}", jar=jar)
        envelope(refused, 405)
        assert refused.headers["allow"] == "GET"
    exec_node = server.base + API + "/exec/system/util/backup/home"
    envelope(curl(exec_node, "-X", "PUT", "--data", "{not json", jar=jar), 400)
    envelope(curl(exec_node, "-X", "PUT", "--data", '{"data": 5, "type": "string"}', jar=jar), 400)
    envelope(curl(exec_node, "-X", "PUT", "--data", "x" * 70000, jar=jar), 413)
    assert envelope(curl(exec_node, jar=jar), 405)["requestPath"] == "/exec/system/util/backup/home"


def test_503_when_the_daemon_is_down_never_0(server: RestServer, jar: Path, daemon: Daemon) -> None:
    assert curl(server.base + API + NODE, jar=jar).json() == seed(0)
    daemon.kill(signal.SIGKILL)
    down = wait_for(lambda: (a := curl(server.base + API + NODE, jar=jar)).status == 503 and a, timeout=2,
                    what="503")
    body = envelope(down, 503)  # type: ignore[arg-type]
    assert "unknown" in body["message"] and '"data"' not in down.body.decode()  # type: ignore[union-attr]
    daemon.start()
    wait_for(lambda: curl(server.base + API + NODE, jar=jar).status == 200, timeout=3, what="recovery")


def test_subtrees_list_their_children(server: RestServer, jar: Path) -> None:
    config = curl(server.base + API + "/status/system/config?op=list", jar=jar).json()["/status/system/config"]
    assert NODE in config["children"] and config["type"] == "subtree" and config["data"] is None
    assert config["children"][NODE]["type"] == "uint32"
    backup = curl(server.base + API + "/exec/system/util/backup?op=list", jar=jar).json()
    assert backup == {"/exec/system/util/backup": {
        "children": {f"/exec/system/util/backup/{c}": {"default": False, "defaultAllowed": False,
                                                       "deleteAllowed": False, "numChildren": 0, "type": "string"}
                     for c in ("full", "home")},
        "data": None, "default": False, "defaultAllowed": False, "deleteAllowed": False, "numChildren": 2,
        "type": "subtree"}, "httpResponseCode": 200, "recurse": False, "requestPath": "/exec/system/util/backup"}
    plain = curl(server.base + API + "/exec/system/util/restore", jar=jar).json()
    assert plain["/exec/system/util/restore"]["numChildren"] == 2 and "children" not in plain[
        "/exec/system/util/restore"]


def test_exec_put_runs_the_hook_with_literal_data(server: RestServer, jar: Path, base_dir: Path,
                                                  runtime_dir: Path) -> None:
    data = "name; rm -rf / $(touch /tmp/pwned)\nsecond line `id`"
    put = curl(server.base + API + "/exec/system/util/backup/home", "-X", "PUT", "-H",
               "Content-Type: application/json", "--data", json.dumps({"data": data, "type": "string",
                                                                       "default": False}), jar=jar)
    assert put.status == 200, put.body
    assert put.json() == {"httpResponseCode": 200, "requestPath": "/exec/system/util/backup/home", "recurse": False}
    assert curl(server.base + API + NODE, jar=jar).json() == seed(1), "the PUT answers once the lock is taken"
    args = base_dir / "hook.sh.args"
    wait_for(args.exists, what="the hook to run")
    assert args.read_text() == f"backup/home\n{data}\n"
    assert not Path("/tmp/pwned").exists()
    wait_for(lambda: curl(server.base + API + NODE, jar=jar).json() == seed(0), timeout=5, what="the hook to end")
    detail = curl(server.base + API + "/status/system/config/backupRestoreUpgradeDetail", jar=jar).json()
    result = detail["/status/system/config/backupRestoreUpgradeDetail"]["data"]["lastResults"]["backup/home"]
    assert result["exitCode"] == 0 and "hook says hi" in result["output"]
    assert "backup/home: hook says hi" in server.log_path.read_text()


def test_two_simultaneous_puts_one_wins_one_gets_409(server: RestServer, jar: Path) -> None:
    def put(node: str, data: object) -> Answer:
        return curl(server.base + API + f"/exec/system/util/{node}", "-X", "PUT", "--data",
                    json.dumps({"data": data, "type": "json" if node == "upgrade" else "string", "default": False}),
                    jar=jar)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda args: put(*args), [("backup/home", "b1"), ("upgrade", {"version": "2"})]))
    assert sorted(a.status for a in answers) == [200, 409]
    lost = next(a for a in answers if a.status == 409)
    assert "in progress" in envelope(lost, 409)["message"]


def test_https_with_a_self_signed_certificate(daemon: Daemon, bus: PrivateBus, runtime_dir: Path,
                                              base_dir: Path) -> None:
    cert, key = base_dir / "cert.pem", base_dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    server = RestServer(bus, runtime_dir, base_dir, extra=["--cert", str(cert), "--key", str(key)],
                        scheme="https")
    try:
        jar = base_dir / "tls-jar"
        login = curl(server.base + "/login", "--cacert", str(cert), "-d", "username=demo&password=secret", jar=jar)
        assert login.status == 302 and "Secure" in login.headers["set-cookie"]
        answer = curl(server.base + API + NODE, "--cacert", str(cert), jar=jar)
        assert answer.json() == seed(0)
        plain = subprocess.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{server.port}{API}{NODE}"],
                               capture_output=True, timeout=30)
        assert b'"data"' not in plain.stdout
    finally:
        server.stop()


@pytest.mark.parametrize("argv, message", [
    (["rest"], "--users FILE is required"),
    (["rest", "--users", "USERS", "--host", "0.0.0.0"], "plain HTTP is only served on loopback"),
    (["rest", "--users", "USERS", "--host", "example.com"], "--host takes an IP address"),
    (["rest", "--users", "USERS", "--cert", "c.pem"], "--cert and --key go together"),
    (["rest", "frob", "--users", "USERS"], "usage: opstate rest"),
])
def test_rest_usage_errors(argv: list[str], message: str, base_dir: Path) -> None:
    argv = [str(base_dir / "users") if a == "USERS" else a for a in argv]
    result = subprocess.run(opstate(*argv), capture_output=True, text=True, timeout=30)
    assert result.returncode == 64 and message in result.stderr
    assert not (base_dir / "users").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no users in"),
    (lambda p: p.mkdir(), "cannot read users file"),
    (lambda p: p.write_bytes(b"\xff\xfe"), "cannot read users file"),
])
def test_unusable_users_file_is_a_clear_error(base_dir: Path, make: object, message: str) -> None:
    users = base_dir / "users"
    make(users)  # type: ignore[operator]
    result = subprocess.run(opstate("rest", "--users", str(users), "--port", "1"), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 71 and message in result.stderr and "Traceback" not in result.stderr


def test_passwd_writes_a_salted_scrypt_hash(base_dir: Path) -> None:
    users = base_dir / "users"
    for _ in range(2):
        subprocess.run(opstate("rest", "passwd", "alice", "--users", str(users)), input="pw\n", text=True,
                       check=True, capture_output=True, timeout=30)
    line = users.read_text().strip()
    name, stored = line.split(":", 1)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (name, scheme, n, r, p) == ("alice", "scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert users.stat().st_mode & 0o777 == 0o600
    from opstate.auth import Users

    assert Users(users).check("alice", "pw") and not Users(users).check("alice", "pW")
    assert not Users(users).check("bob", "pw")


@pytest.mark.parametrize("data", ["-rf", "--config=/etc/shadow", "a\u0000b", "\ud800"])
def test_data_that_cannot_be_one_safe_argument_is_refused(server: RestServer, jar: Path, base_dir: Path,
                                                          data: str) -> None:
    body = json.dumps({"data": data, "type": "string", "default": False})
    answer = curl(server.base + API + "/exec/system/util/backup/home", "-X", "PUT", "--data", body, jar=jar)
    assert envelope(answer, 400)["message"].startswith("Request failed: data for backup/home ")
    assert not (base_dir / "hook.sh.args").exists()
    assert curl(server.base + API + NODE, jar=jar).json() == seed(0)


def test_a_hook_writing_a_huge_line_still_finishes(daemon: Daemon, bus: PrivateBus, runtime_dir: Path,
                                                   base_dir: Path) -> None:
    script = base_dir / "chatty.sh"
    script.write_text("#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\\\0' x\necho\necho done\n")
    script.chmod(0o755)
    hooks = base_dir / "chatty.json"
    hooks.write_text(json.dumps({"upgrade": [str(script)]}))
    server = RestServer(bus, runtime_dir, base_dir, hooks=hooks)
    try:
        jar = base_dir / "chatty-jar"
        curl(server.base + "/login", "-d", "username=demo&password=secret", jar=jar)
        put = curl(server.base + API + "/exec/system/util/upgrade", "-X", "PUT", "--data",
                   '{"data": {"v": 2}, "type": "json", "default": false}', jar=jar)
        assert put.status == 200
        detail = API + "/status/system/config/backupRestoreUpgradeDetail"

        def finished() -> object:
            results = curl(server.base + detail, jar=jar).json()[detail.removeprefix(API)]["data"]["lastResults"]
            return results.get("upgrade", {}).get("exitCode") == 0 and results["upgrade"]
        result = wait_for(finished, timeout=10, what="the hook to finish")
        assert result["output"][-1] == "done"  # type: ignore[index]
    finally:
        server.stop()
