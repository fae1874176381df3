"""The pure parts of history exports: the ETA, what the account may read,
and the record format."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime

from svc_message.domain.history_export import eta_seconds, readable, record
from svc_message.model import Message
from svc_message.model.history_export import EXPORT_FORMAT, ExportJob, ExportState

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def job(**fields: object) -> ExportJob:
    base = ExportJob(
        export_id="e",
        account_id="a",
        device_id="d",
        request_id="r",
        conversation_id="",
        state=ExportState.RUNNING,
        created_at=T0,
        updated_at=T0,
        bytes_total=1000,
        running_at=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def message(seq: int, **fields: object) -> Message:
    base = Message(
        message_id=f"m{seq}",
        conversation_id="c",
        seq=seq,
        sender_account_id="b",
        sender_device_id="bd",
        type=1,
        body=b"\x00cipher",
        reply_to_message_id="",
        created_at=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_the_eta_is_the_rest_at_the_rate_so_far() -> None:
    now = T0.timestamp() + 10
    assert eta_seconds(job(bytes_done=250), now) == 30.0
    # Unknown before any progress, and outside RUNNING.
    assert eta_seconds(job(bytes_done=0), now) is None
    assert eta_seconds(job(bytes_done=250, state=ExportState.RESTORING), now) is None
    assert eta_seconds(job(bytes_done=1000, state=ExportState.READY), now) is None


def test_readable_leaves_out_deleted_for_everyone_and_for_the_account() -> None:
    items = [
        message(1),
        message(2, deleted=True, body=b""),
        message(3, hidden_for=("a",)),
        message(4, hidden_for=("someone else",)),
    ]
    assert [m.seq for m in readable(items, "a")] == [1, 4]
    assert [m.seq for m in readable(items, "someone else")] == [1, 3]


def test_a_record_is_one_json_line_with_the_ciphertext_in_base64() -> None:
    line = record(message(7, reactions=(("👍", ("a", "b")),), media_ids=("x",)))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert data["format"] == EXPORT_FORMAT
    assert (data["conversation_id"], data["message_id"], data["seq"]) == ("c", "m7", 7)
    assert base64.b64decode(data["body"]) == b"\x00cipher"
    assert data["create_time"] == "2026-12-01T00:00:00+00:00"
    assert data["edit_time"] is None
    assert data["reactions"] == {"👍": ["a", "b"]}
    assert data["media_ids"] == ["x"]
    assert data["system"] is False
