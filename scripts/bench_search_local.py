"""Measure the SDK's on-device search index (parley_dev.bench.search_local):

    .venv/bin/python scripts/bench_search_local.py                 # 100k messages
    .venv/bin/python scripts/bench_search_local.py --quick         # 10k, a smoke run
    .venv/bin/python scripts/bench_search_local.py --json out.json

``parley bench --scenario search`` runs the same measurement beside the server's.
"""

from __future__ import annotations

import sys

from parley_dev.bench.search_local import main

if __name__ == "__main__":
    sys.exit(main())
