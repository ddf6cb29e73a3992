#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: installs what it needs, lints, type-checks and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Some tests run opstate as the unprivileged user nobody: it must be able to reach this checkout.
dir=$PWD
while [ "$dir" != / ]; do
  if ! runuser -u nobody -- test -x "$dir" 2>/dev/null; then
    echo "test: letting other users traverse $dir (chmod o+x) so that tests can run as nobody" >&2
    chmod o+x "$dir"
  fi
  dir=$(dirname "$dir")
done
.venv/bin/ruff check opstate tests bench
.venv/bin/mypy opstate
exec .venv/bin/pytest -p no:cacheprovider "$@"
