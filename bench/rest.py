#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Benchmark of the REST node: GET throughput and latency with wrk, beside nginx serving the same bytes.

16 keep-alive connections on loopback with a valid session, against ``opstate rest`` (daemon on a
private bus) and against nginx (Debian package) serving the node's answer as a static file, in the
same run. Targets: p99 <= 3 ms and at least a third of nginx's requests/s.

Run: .venv/bin/python bench/rest.py [--seconds S]   (installs wrk and nginx-light with apt if missing)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import Daemon, PrivateBus, RestServer, free_port

NODE = "/status/system/config/backupRestoreUpgradeInProgress"
PATH = "/lrs/api/v1.0" + NODE
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def need(*tools: str) -> None:
    if not all(shutil.which(t) for t in tools):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx-light"], check=True,
                       capture_output=True)


def wrk(url: str, seconds: float, cookie: str | None = None) -> tuple[float, float, float]:
    """Return (requests/s, p50 ms, p99 ms)."""
    argv = ["wrk", "-t2", "-c16", f"-d{int(seconds)}s", "--latency", url]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"wrk saw errors:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * UNITS[unit]

    return rate, latency("50"), latency("99")


def nginx(work: Path, body: bytes) -> tuple[subprocess.Popen[bytes], int]:
    root = work / "www"
    target = root / PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; default_type application/json; keepalive_requests 1000000;
  client_body_temp_path {work}/t1; proxy_temp_path {work}/t2; fastcgi_temp_path {work}/t3;
  uwsgi_temp_path {work}/t4; scgi_temp_path {work}/t5;
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf)]), port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    need("wrk", "nginx")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        bus = PrivateBus(work / "bus")
        daemon = Daemon(bus, work / "run", work).start()
        server = RestServer(bus, work / "run", work)
        try:
            login = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-d", "username=demo&password=secret",
                                    server.base + "/login"], capture_output=True, text=True, check=True).stdout
            cookie = re.search(r"(connect\.sid=[^;]+)", login).group(1)  # type: ignore[union-attr]
            body = subprocess.run(["curl", "-s", "-H", f"Cookie: {cookie}", server.base + PATH],
                                  capture_output=True, check=True).stdout
            web, port = nginx(work, body)
            try:
                ours = wrk(server.base + PATH, args.seconds, cookie)
                base = wrk(f"http://127.0.0.1:{port}{PATH}", args.seconds)
            finally:
                web.terminate()
                web.wait()
        finally:
            server.stop()
            daemon.stop()
            bus.stop()
    print(f"opstate rest: {ours[0]:.0f} req/s, p50 {ours[1]:.2f} ms, p99 {ours[2]:.2f} ms")
    print(f"nginx static: {base[0]:.0f} req/s, p50 {base[1]:.2f} ms, p99 {base[2]:.2f} ms")
    print(f"-> {ours[0] / base[0]:.2f}x nginx's requests/s (target >= 0.33: "
          f"{'met' if ours[0] / base[0] >= 1 / 3 else 'MISSED'}); p99 target <= 3 ms: "
          f"{'met' if ours[2] <= 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
