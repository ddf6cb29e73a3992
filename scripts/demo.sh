#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: a runtime dir under a temp folder and an example operation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/opstate-demo.XXXXXX)
export OPSTATE_RUNTIME_DIR="$work/run"
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "state before anything runs"
opstate status --direct
step "an example upgrade (3 s) under the operation lock; its hook asks for the state"
opstate run upgrade -- sh -c 'echo "upgrade.sh: upgrading..."; opstate status --direct; sleep 3' &
sleep 1
step "a backup started meanwhile is refused (exit 75)"
opstate run backup -- true || echo "exit code $?"
step "a backup that waits for the upgrade to end"
opstate run backup --wait=10 -- sh -c 'echo "backup.sh: backing up"; opstate status --direct --json'
wait
step "state afterwards"
opstate status --direct
