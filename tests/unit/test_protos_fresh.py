"""Generated code is committed; it must match what the .proto files generate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed_root = ROOT / "protos"
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in committed_root.joinpath("parley").rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    }
    stale = sorted(str(path) for path in fresh if committed.get(path) != fresh[path])
    extra = sorted(str(path) for path in committed if path not in fresh)
    assert not stale and not extra, (
        f"generated code is out of date (stale: {stale}, not generated: {extra}); "
        "run: uv run python scripts/gen_protos.py"
    )


def test_the_generated_reasons_are_the_proto_enum() -> None:
    from parley.common.v1 import common_pb2
    from parley.common.v1.reasons import ErrorReason

    wire = {v.name for v in common_pb2.ErrorReason.DESCRIPTOR.values if v.number != 0}
    assert {reason.value for reason in ErrorReason} == wire
    assert all(reason.value == f"ERROR_REASON_{reason.name}" for reason in ErrorReason)
    assert len(ErrorReason) == len(wire)


def test_every_enum_starts_with_unspecified() -> None:
    from parley.common.v1 import common_pb2
    from parley.message.v1 import messages_pb2
    from parley.presence.v1 import presence_pb2

    for module in (common_pb2, messages_pb2, presence_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name} starts with {zero}"


def test_every_mutating_rpc_has_a_request_id_and_every_list_pages() -> None:
    from parley.keys.v1 import accounts_pb2, keys_pb2
    from parley.message.v1 import messages_pb2
    from parley.presence.v1 import presence_pb2

    reads = {"GetAccount", "ListDevices", "GetConversation", "ListConversations", "ListMessages"}
    reads |= {"GetPresence", "SubscribePresence", "GetPresenceSettings", "GetPushSettings"}
    reads |= {"GetPreKeyBundles", "GetPreKeyCount", "GetDeviceKeys", "GetHistoryExport"}
    # Hands each envelope out at most once: a retry gets whatever is next.
    reads |= {"ClaimSenderKeys"}
    # Setting a value or a set membership: a retry leaves the same state, so
    # no request id is needed to make it safe (AIP-155 is for the rest).
    naturally_idempotent = {
        "Heartbeat",
        "GoOffline",
        "UpdatePresenceSettings",
        "AddContacts",
        "RemoveContacts",
        "RegisterPushToken",
        "RemovePushToken",
        "UpdatePushSettings",
        "PublishKeys",
        "UploadPreKeys",
        # A cancelled export stays cancelled; cancelling it again answers it.
        "CancelHistoryExport",
    }
    for module in (accounts_pb2, keys_pb2, messages_pb2, presence_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                fields = set(method.input_type.fields_by_name)
                if method.name.startswith("List"):
                    assert {"page_size", "page_token"} <= fields, method.full_name
                    assert "next_page_token" in method.output_type.fields_by_name
                elif method.name not in reads | naturally_idempotent | {"Connect"}:
                    assert "request_id" in fields, method.full_name
