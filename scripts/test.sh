#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: installs what it needs, lints, type-checks and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check opstate tests bench
.venv/bin/mypy opstate
exec .venv/bin/pytest -p no:cacheprovider "$@"
