#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: a private D-Bus bus, a runtime dir under a temp folder, the daemon,
# and an example operation watched through D-Bus.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/opstate-demo.XXXXXX)
chmod 0755 "$work"
export OPSTATE_RUNTIME_DIR="$work/run"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
prop() { busctl --address="$OPSTATE_BUS" get-property org.opstate.OpState1 /org/opstate/OpState1 org.opstate.OpState1 "$1"; }

step "a private D-Bus bus"
dbus-daemon --session --nofork --nosyslog --address="unix:path=$work/bus" --print-address=1 > "$work/bus.address" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/bus.address" ] && break; sleep 0.05; done
export OPSTATE_BUS="unix:path=$work/bus"
echo "$OPSTATE_BUS"

step "the daemon (logs to $work/daemon.log)"
opstated > "$work/daemon.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do opstate status >/dev/null 2>&1 && break; sleep 0.05; done
echo "InProgress: $(prop InProgress)   opstate status: $(opstate status)"

step "watching changes (opstate watch)"
opstate watch &
pids+=($!)
sleep 0.5

step "an example upgrade (3 s) under the operation lock; its hook asks for the state"
opstate run upgrade -- sh -c 'echo "upgrade.sh: upgrading..."; opstate status; sleep 3' &
upgrade=$!
sleep 1
echo "InProgress: $(prop InProgress)   Operation: $(prop Operation)"

step "a backup started meanwhile is refused (exit 75)"
opstate run backup -- true || echo "exit code $?"

step "a backup that waits for the upgrade to end"
opstate run backup --wait=10 -- sh -c 'echo "backup.sh: backing up"; sleep 1'
wait "$upgrade"

step "afterwards"
sleep 0.2
echo "InProgress: $(prop InProgress)   opstate status: $(opstate status)"
step "what the daemon logged"
cat "$work/daemon.log"
