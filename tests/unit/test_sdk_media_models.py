"""Media values without a server: the attachment pointer's encoding inside the
encrypted content, upload records and part planning, and the typed errors of
the media reasons."""

from __future__ import annotations

import enum
import os

import grpc
import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.rpc import error_details_pb2, status_pb2

from parley.e2ee.v1 import e2ee_pb2
from parley.media.v1 import media_pb2
from parley.message.v1 import messages_pb2
from parley_sdk import (
    Attachment,
    ContentClass,
    ErrorReason,
    FailedPreconditionError,
    MediaAccessDeniedError,
    MediaArchivedError,
    MediaNotFoundError,
    MediaNoticeKind,
    MediaQuarantinedError,
    MessageType,
    QuotaExceededError,
    RestoreState,
    Thumbnail,
    TooManyUploadsError,
    UploadIncompleteError,
    UploadNotFoundError,
)
from parley_sdk._secure import read_content
from parley_sdk._uploads import (
    MAX_PARTS,
    PART_SIZE,
    ObjectUpload,
    PartSlice,
    SourceIdentity,
    UploadRecord,
    content_class_of,
    message_type_of,
    part_size_for,
    part_slices,
)
from parley_sdk.e2ee import PADDING_BLOCK, attachment_content, parse_content
from parley_sdk.e2ee.files import FileCipher
from parley_sdk.errors import from_status


@pytest.mark.parametrize(
    ("mirror", "proto", "prefix"),
    [
        (ContentClass, media_pb2.ContentClass, "CONTENT_CLASS_"),
        (RestoreState, media_pb2.Restore.State, "STATE_"),
        (MediaNoticeKind, messages_pb2.MediaNotice.Kind, "KIND_"),
    ],
)
def test_media_enums_mirror_the_proto(
    mirror: type[enum.IntEnum], proto: EnumTypeWrapper, prefix: str
) -> None:
    wire = {name.removeprefix(prefix): value for name, value in proto.items()}
    assert {member.name: member.value for member in mirror} == wire


def pointer(**overrides: object) -> Attachment:
    fields: dict[str, object] = {
        "media_id": "m-1",
        "key": os.urandom(32),
        "digest": os.urandom(32),
        "size": 1234,
        "plaintext_size": 1200,
        "content_type": "image/jpeg",
        "file_name": "crag.jpg",
        "caption": "the north wall",
        "width": 4032,
        "height": 3024,
        "blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
        "thumbnail": Thumbnail("m-2", os.urandom(32), os.urandom(32), 9000, "image/jpeg", 320, 240),
    }
    fields.update(overrides)
    return Attachment(**fields)  # type: ignore[arg-type]


def test_the_pointer_round_trips_through_the_padded_content() -> None:
    original = pointer()
    content = attachment_content(original.to_proto())
    assert len(content) % PADDING_BLOCK == 0
    assert parse_content(content).WhichOneof("kind") == "attachment"
    caption, decoded = read_content(content)
    assert decoded == original and caption == "the north wall"
    assert original.media_ids == ("m-1", "m-2")
    without = pointer(thumbnail=None, caption="")
    assert read_content(attachment_content(without.to_proto())) == ("", without)
    assert without.media_ids == ("m-1",)


def test_the_pointer_keeps_the_e2ee_field_numbers() -> None:
    fields = {f.name: f.number for f in e2ee_pb2.Content.DESCRIPTOR.fields}
    assert (fields["text"], fields["sender_key"], fields["attachment"]) == (1, 2, 3)
    assert fields["padding"] == 15
    text_only = e2ee_pb2.Content(text=e2ee_pb2.Text(text="hi")).SerializeToString()
    assert read_content(text_only) == ("hi", None)


def test_keys_stay_out_of_reprs() -> None:
    value = pointer()
    assert value.key.hex() not in repr(value)
    assert value.thumbnail is not None and value.thumbnail.key.hex() not in repr(value)
    assert value.digest.hex() not in repr(value)


@pytest.mark.parametrize(
    ("content_type", "content_class", "message_type"),
    [
        ("image/png", ContentClass.IMAGE, MessageType.IMAGE),
        ("video/mp4", ContentClass.VIDEO, MessageType.VIDEO),
        ("audio/ogg", ContentClass.AUDIO, MessageType.AUDIO),
        ("application/pdf", ContentClass.DOCUMENT, MessageType.DOCUMENT),
        ("text/plain", ContentClass.DOCUMENT, MessageType.DOCUMENT),
    ],
)
def test_types_and_classes(
    content_type: str, content_class: ContentClass, message_type: MessageType
) -> None:
    assert content_class_of(content_type) is content_class
    assert message_type_of(content_type) is message_type


def test_parts_cover_the_ciphertext_exactly() -> None:
    assert part_slices(10, 4) == [PartSlice(1, 0, 4), PartSlice(2, 4, 8), PartSlice(3, 8, 10)]
    assert part_slices(8, 4)[-1] == PartSlice(2, 4, 8)
    assert part_slices(3, 4) == [PartSlice(1, 0, 3)]
    with pytest.raises(ValueError, match="positive"):
        part_slices(0, 4)


def record() -> UploadRecord:
    main = ObjectUpload(
        cipher=FileCipher.generate(),
        plaintext_size=20,
        size=30,
        sha256=os.urandom(32),
        content_class=ContentClass.DOCUMENT,
        create_request_id="r-main",
        multipart=True,
        part_size=10,
        part_sha256s=(os.urandom(32), os.urandom(32), os.urandom(32)),
        upload_id="u1",
        media_id="m1",
        stored_parts={1, 3},
        expire_time=1_900_000_000.0,
    )
    thumbnail = ObjectUpload(
        cipher=FileCipher.generate(),
        plaintext_size=5,
        size=30,
        sha256=os.urandom(32),
        content_class=ContentClass.THUMBNAIL,
        create_request_id="r-thumb",
        multipart=False,
        completed=True,
        media_id="m2",
    )
    return UploadRecord(
        request_id="req",
        conversation_id="c1",
        source=SourceIdentity("/tmp/x.bin", 20, 123),
        requested_content_type=None,
        requested_file_name="x.bin",
        caption="hi",
        content_type="application/octet-stream",
        file_name="x.bin",
        main=main,
        thumbnail=thumbnail,
        thumbnail_ciphertext=os.urandom(30),
        started_at=1_800_000_000.0,
    )


def test_an_upload_record_survives_the_store_as_json() -> None:
    saved = record()
    loaded = UploadRecord.from_json(saved.to_json())
    assert loaded.to_json() == saved.to_json()
    assert loaded.main.cipher == saved.main.cipher
    assert loaded.main.stored_parts == {1, 3}
    assert loaded.thumbnail is not None and loaded.thumbnail.completed
    # Two of the three 10-byte parts and the whole thumbnail are stored.
    assert (loaded.total_bytes, loaded.stored_bytes()) == (60, 50)


def test_a_restart_forgets_the_session_but_not_the_ciphertext() -> None:
    upload = record().main
    cipher, sha256 = upload.cipher, upload.sha256
    upload.restart("r-new", multipart=False)
    assert (upload.upload_id, upload.media_id, upload.stored_parts) == ("", "", set())
    assert (upload.create_request_id, upload.multipart) == ("r-new", False)
    assert (upload.cipher, upload.sha256) == (cipher, sha256)


def test_the_pointer_is_only_made_from_completed_uploads() -> None:
    saved = record()
    with pytest.raises(ValueError, match="not complete"):
        saved.attachment()
    saved.main.completed = True
    made = saved.attachment()
    assert made.media_ids == ("m1", "m2")
    assert made.key == saved.main.cipher.key
    assert made.thumbnail is not None and made.thumbnail.key == saved.thumbnail.cipher.key  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["{", '{"version": 99}', '{"version": 1}', "[]"])
def test_unreadable_records_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError, match="upload record"):
        UploadRecord.from_json(text)


# -- typed errors -----------------------------------------------------------------------


def status(code: grpc.StatusCode, reason: str, **metadata: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="parley.dev", metadata=metadata)
    result = status_pb2.Status(code=code.value[0], message="refused")
    result.details.add().Pack(info)
    return result


def test_quota_errors_carry_the_quota_limit_and_usage() -> None:
    error = from_status(
        status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.QUOTA_EXCEEDED,
            quota="daily_upload_bytes",
            limit_bytes="1073741824",
            used_bytes="1073000000",
        )
    )
    assert isinstance(error, QuotaExceededError)
    assert (error.quota, error.limit_bytes, error.used_bytes) == (
        "daily_upload_bytes",
        1073741824,
        1073000000,
    )
    bare = from_status(status(grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.QUOTA_EXCEEDED))
    assert isinstance(bare, QuotaExceededError)
    assert (bare.quota, bare.limit_bytes, bare.used_bytes) == ("", None, None)


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.TOO_MANY_UPLOADS, TooManyUploadsError),
        (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.UPLOAD_INCOMPLETE, UploadIncompleteError),
        (grpc.StatusCode.NOT_FOUND, ErrorReason.UPLOAD_NOT_FOUND, UploadNotFoundError),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            ErrorReason.MEDIA_ACCESS_DENIED,
            MediaAccessDeniedError,
        ),
        (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_ARCHIVED, MediaArchivedError),
        (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_QUARANTINED, MediaQuarantinedError),
        (grpc.StatusCode.NOT_FOUND, ErrorReason.MEDIA_NOT_FOUND, MediaNotFoundError),
    ],
)
def test_media_reasons_map_to_their_classes(
    code: grpc.StatusCode, reason: str, cls: type[Exception]
) -> None:
    assert type(from_status(status(code, reason))) is cls


def test_a_media_reason_under_another_code_keeps_the_codes_class() -> None:
    error = from_status(status(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_NOT_FOUND))
    assert type(error) is FailedPreconditionError


def test_huge_files_get_larger_parts_within_the_part_count() -> None:
    assert part_size_for(1) == PART_SIZE
    assert part_size_for(PART_SIZE * MAX_PARTS) == PART_SIZE
    bigger = part_size_for(PART_SIZE * MAX_PARTS + 1)
    assert bigger == PART_SIZE + 1024 * 1024
    assert len(part_slices(PART_SIZE * MAX_PARTS + 1, bigger)) <= MAX_PARTS
