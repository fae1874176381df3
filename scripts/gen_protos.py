"""Regenerate the Python code for every .proto under protos/.

Usage: uv run python scripts/gen_protos.py [--out DIR]

The generated modules are committed next to their .proto files so that the
services, the SDK and any user can import them without a build step;
tests/unit/test_protos_fresh.py fails when running this would change them.

Besides protoc's output it writes ``parley/common/v1/reasons.py``: the
``parley.common.v1.ErrorReason`` names as a plain ``enum.StrEnum``, so the
services' error taxonomy and the SDK's errors share one list without
importing protobuf code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
INIT_TEXT = '"""Generated from protos/: do not edit; run scripts/gen_protos.py."""\n'
REASONS_PACKAGE, REASONS_ENUM = "parley.common.v1", "ErrorReason"
REASONS_MODULE = Path("parley/common/v1/reasons.py")
REASONS_PREFIX = "ERROR_REASON_"
REASONS_HEADER = '''"""``parley.common.v1.ErrorReason`` names, the reason strings of ErrorInfo.

Generated from protos/parley/common/v1/common.proto by scripts/gen_protos.py:
do not edit. Pure Python (no protobuf import), so the services' error
taxonomy and the SDK's errors share this one list.
"""

from __future__ import annotations

import enum


class ErrorReason(enum.StrEnum):
    """A reason's name without its prefix; the value is the wire name."""

'''


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.joinpath("parley").rglob("*.proto"))


def reasons_source(descriptors: descriptor_pb2.FileDescriptorSet) -> str:
    """The reasons module for the ErrorReason enum, UNSPECIFIED left out."""
    for file in descriptors.file:
        if file.package != REASONS_PACKAGE:
            continue
        for enum_type in file.enum_type:
            if enum_type.name == REASONS_ENUM:
                members = [
                    f'    {value.name.removeprefix(REASONS_PREFIX)} = "{value.name}"\n'
                    for value in enum_type.value
                    if value.number != 0
                ]
                return REASONS_HEADER + "".join(members)
    raise SystemExit(f"{REASONS_PACKAGE}.{REASONS_ENUM} not found in protos/")


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        descriptor_set = Path(scratch) / "descriptors.bin"
        run_protoc(out, well_known, bin_dir, files, descriptor_set)
        descriptors = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    # Regular packages (not namespace packages) so mypy and import-linter see them.
    for directory in {out / Path(f).parent for f in files} | {out / "parley"}:
        current = directory
        while current != out:
            (current / "__init__.py").write_text(INIT_TEXT)
            current = current.parent
    (out / REASONS_MODULE).write_text(reasons_source(descriptors))


def run_protoc(
    out: Path, well_known: Path, bin_dir: Path, files: list[str], descriptor_set: Path
) -> None:
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
        f"--descriptor_set_out={descriptor_set}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


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
