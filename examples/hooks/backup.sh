#!/bin/sh
# SPDX-License-Identifier: MIT
# Demo backup hook: tars $OPSTATE_DEMO_DIR/config into $OPSTATE_DEMO_DIR/backups/<name>.tar.gz.
# $1 is the scope (home or full), $2 the data of the PUT (a backup name), passed literally.
set -eu
demo=${OPSTATE_DEMO_DIR:?set OPSTATE_DEMO_DIR}
name=$(printf '%s' "${2:-backup}" | tr -c 'A-Za-z0-9._-' '_')
mkdir -p "$demo/backups"
echo "backing up $1 configuration as $name"
sleep 2
tar -czf "$demo/backups/$name.tar.gz" -C "$demo" config
echo "wrote $demo/backups/$name.tar.gz"
