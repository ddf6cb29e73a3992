# SPDX-License-Identifier: MIT
"""``python -m opstate`` is the ``opstate`` command."""

import sys

from opstate.cli import main

sys.exit(main())
