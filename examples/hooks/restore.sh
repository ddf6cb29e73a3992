#!/bin/sh
# SPDX-License-Identifier: MIT
# Demo restore hook: untars $OPSTATE_DEMO_DIR/backups/<name>.tar.gz over $OPSTATE_DEMO_DIR.
set -eu
demo=${OPSTATE_DEMO_DIR:?set OPSTATE_DEMO_DIR}
name=$(printf '%s' "${2:-backup}" | tr -c 'A-Za-z0-9._-' '_')
echo "restoring $1 configuration from $name"
tar -xzf "$demo/backups/$name.tar.gz" -C "$demo"
echo "restored"
