"""Write the operator's CRDs into helm/parley/crds/ (run after changing parley_operator.crds).

uv run python operator/generate_crds.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parley_operator.crd_files import CRD_DIR, write_crds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=CRD_DIR, help="directory to write into")
    args = parser.parse_args()
    for path in write_crds(args.out):
        print(path)


if __name__ == "__main__":
    main()
