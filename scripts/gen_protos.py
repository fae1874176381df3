"""Regenerate the Python code for every .proto under protos/.

Usage: uv run python scripts/gen_protos.py [--out DIR]

The generated modules are committed next to their .proto files so that the
services, the SDK and any user can import them without a build step;
tests/unit/test_protos_fresh.py fails when running this would change them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
INIT_TEXT = '"""Generated from protos/: do not edit; run scripts/gen_protos.py."""\n'


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.joinpath("parley").rglob("*.proto"))


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace packages) so mypy and import-linter see them.
    for directory in {out / Path(f).parent for f in files} | {out / "parley"}:
        current = directory
        while current != out:
            (current / "__init__.py").write_text(INIT_TEXT)
            current = current.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args(argv)
    if args.out == PROTO_ROOT:
        # Start clean so code for a deleted .proto does not linger.
        for generated in PROTO_ROOT.joinpath("parley").rglob("*_pb2*.py*"):
            generated.unlink()
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
