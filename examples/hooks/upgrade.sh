#!/bin/sh
# SPDX-License-Identifier: MIT
# Demo upgrade hook: takes a few seconds. $1 is the PUT's data (JSON), passed literally.
set -eu
echo "upgrading with $1"
for step in download verify install; do echo "$step"; sleep 1; done
echo "upgrade done"
