#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what opstate needs on a fresh Debian 12 (run as root): Debian's Python (so unprivileged test
# users can run it too), dbus-daemon and the D-Bus tools, PyGObject's build dependencies, and a venv in
# .venv with opstate and its test tools. Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-dev gcc pkg-config libgirepository1.0-dev libcairo2-dev
          dbus-daemon dbus-bin libglib2.0-bin systemd util-linux curl openssl procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || [ "$(readlink -f .venv/bin/python)" != "$(readlink -f /usr/bin/python3)" ]; then
  rm -rf .venv
  /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.opstate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing opstate into .venv" >&2
  .venv/bin/pip install -q -e '.[test]' 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
