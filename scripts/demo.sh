#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: a private D-Bus bus, a runtime dir under a temp folder, the daemon,
# the LineRate REST server on loopback, and an example backup started through the REST exec node.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/opstate-demo.XXXXXX)
chmod 0755 "$work"
export OPSTATE_RUNTIME_DIR="$work/run" OPSTATE_DEMO_DIR="$work/demo"
port=${OPSTATE_DEMO_PORT:-8443}
api="http://127.0.0.1:$port/lrs/api/v1.0"
node=/status/system/config/backupRestoreUpgradeInProgress
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; echo; }
until_ok() { for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "timed out: $*" >&2; return 1; }

step "a private D-Bus bus at unix:path=$work/bus"
dbus-daemon --session --nofork --nosyslog --address="unix:path=$work/bus" --print-address=1 >/dev/null 2>&1 &
pids+=($!)
export OPSTATE_BUS="unix:path=$work/bus"
until_ok busctl --address="$OPSTATE_BUS" status

step "the daemon (log: $work/daemon.log), then: opstate status"
opstated > "$work/daemon.log" 2>&1 &
pids+=($!)
until_ok opstate status
opstate status

step "a demo user for the REST server (password from stdin)"
echo "demo-password" | opstate rest passwd demo --users "$work/users"

step "the REST server on 127.0.0.1:$port (log: $work/rest.log) with the example hooks of examples/hooks"
mkdir -p "$OPSTATE_DEMO_DIR/config" && echo "hostname demo" > "$OPSTATE_DEMO_DIR/config/system.conf"
opstate rest --port "$port" --users "$work/users" --hooks examples/hooks/hooks.json > "$work/rest.log" 2>&1 &
pids+=($!)
until_ok curl -s -o /dev/null "http://127.0.0.1:$port/"

step "log in (form body), keep the connect.sid cookie"
show curl -s -o /dev/null -w '%{http_code} -> %{redirect_url}' -c "$work/jar" -d 'username=demo&password=demo-password' \
  "http://127.0.0.1:$port/login"

step "read the node: 0"
show curl -s -b "$work/jar" "$api$node"

step "start a backup through the exec node"
show curl -s -b "$work/jar" -X PUT -H 'Content-Type: application/json' \
  --data '{"data": "demo-backup", "type": "string", "default": false}' "$api/exec/system/util/backup/home"

step "read the node while it runs: 1"
show curl -s -b "$work/jar" "$api$node"

step "a second operation meanwhile is refused: 409"
show curl -s -b "$work/jar" -X PUT --data '{"data": {"version": "2.6.1"}, "type": "json", "default": false}' \
  "$api/exec/system/util/upgrade"

step "wait for it to end (opstate wait), then read the node: 0"
opstate wait --timeout 30
show curl -s -b "$work/jar" "$api$node"
ls -l "$OPSTATE_DEMO_DIR/backups"

step "what the daemon and the REST server logged"
cat "$work/daemon.log" "$work/rest.log"
