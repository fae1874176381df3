"""``python -m parley_dev``: the developers' ``parley`` command, as ``./parley`` runs it."""

import sys

from parley_dev.cli import main

sys.exit(main())
