"""``python -m parley_cli``: the same as the ``parley`` console script."""

import sys

from parley_cli.console import main

sys.exit(main())
