"""What a file upload under way is, as kept in the device's store, and how it is cut.

A send of a file is an :class:`UploadRecord` keyed by the send's request id:
the file's identity (path, size, modification time), what the message will
say about it, and one :class:`ObjectUpload` per object (the file, and an
image's thumbnail) with its key, the digests it declared, the server's
upload id and the parts known to be stored. The record is saved before
every step that the server remembers, so a process killed at any point
resumes from the record: the ciphertext is rebuilt from the file with the
same key and nonce prefix (encryption is deterministic for them), GetUpload
tells which parts are stored, and the rest is sent. Nothing here talks to
the network.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from parley_sdk._media_models import Attachment, ContentClass, Thumbnail
from parley_sdk.e2ee.files import FileCipher
from parley_sdk.models import MessageType

__all__ = [
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "ObjectUpload",
    "PartSlice",
    "SourceIdentity",
    "UploadRecord",
    "content_class_of",
    "message_type_of",
    "part_size_for",
    "part_slices",
]

MULTIPART_THRESHOLD = 8 * 1024 * 1024
"""Ciphertexts above this size go up in parts (the media service's default
threshold; a deployment with another one says so, and the SDK follows)."""
PART_SIZE = 8 * 1024 * 1024
"""Bytes per part; S3 wants at least 5 MiB for every part but the last."""
MAX_PARTS = 10_000
"""S3's (and so the media service's) most parts per upload."""
_MiB = 1024 * 1024
_RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class PartSlice:
    """Part ``number`` (from 1) is ciphertext bytes ``[start, end)``."""

    number: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def part_size_for(size: int) -> int:
    """PART_SIZE, or whole MiB more for a ciphertext that would need more than
    MAX_PARTS parts of it (above 80 GiB)."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // _MiB) * _MiB)


def part_slices(size: int, part_size: int) -> list[PartSlice]:
    """How a ciphertext of ``size`` bytes is cut into parts of ``part_size``."""
    if size <= 0 or part_size <= 0:
        raise ValueError("size and part_size must be positive")
    return [
        PartSlice(number, start, min(start + part_size, size))
        for number, start in enumerate(range(0, size, part_size), start=1)
    ]


def content_class_of(content_type: str) -> ContentClass:
    major = content_type.partition("/")[0]
    return {
        "image": ContentClass.IMAGE,
        "video": ContentClass.VIDEO,
        "audio": ContentClass.AUDIO,
    }.get(major, ContentClass.DOCUMENT)


def message_type_of(content_type: str) -> MessageType:
    """The message's type label for a file: the server uses it for nothing but display."""
    return {
        ContentClass.IMAGE: MessageType.IMAGE,
        ContentClass.VIDEO: MessageType.VIDEO,
        ContentClass.AUDIO: MessageType.AUDIO,
    }.get(content_class_of(content_type), MessageType.DOCUMENT)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(slots=True, kw_only=True)
class ObjectUpload:
    """One object on its way to the media service."""

    cipher: FileCipher = field(repr=False)
    plaintext_size: int
    size: int
    sha256: bytes = field(repr=False)
    content_class: ContentClass
    create_request_id: str
    """CreateUpload's AIP-155 id: a retry, or a resume before the answer
    arrived, gets the same session."""
    multipart: bool
    part_size: int = 0
    part_sha256s: tuple[bytes, ...] = field(default=(), repr=False)
    upload_id: str = ""
    media_id: str = ""
    stored_parts: set[int] = field(default_factory=set)
    completed: bool = False
    expire_time: float | None = None
    """When the server's session expires (seconds since the epoch)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": _b64(self.cipher.key),
            "nonce_prefix": _b64(self.cipher.nonce_prefix),
            "plaintext_size": self.plaintext_size,
            "size": self.size,
            "sha256": _b64(self.sha256),
            "content_class": int(self.content_class),
            "create_request_id": self.create_request_id,
            "multipart": self.multipart,
            "part_size": self.part_size,
            "part_sha256s": [_b64(h) for h in self.part_sha256s],
            "upload_id": self.upload_id,
            "media_id": self.media_id,
            "stored_parts": sorted(self.stored_parts),
            "completed": self.completed,
            "expire_time": self.expire_time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            cipher=FileCipher(_unb64(data["key"]), _unb64(data["nonce_prefix"])),
            plaintext_size=int(data["plaintext_size"]),
            size=int(data["size"]),
            sha256=_unb64(data["sha256"]),
            content_class=ContentClass(int(data["content_class"])),
            create_request_id=str(data["create_request_id"]),
            multipart=bool(data["multipart"]),
            part_size=int(data["part_size"]),
            part_sha256s=tuple(_unb64(h) for h in data["part_sha256s"]),
            upload_id=str(data["upload_id"]),
            media_id=str(data["media_id"]),
            stored_parts={int(n) for n in data["stored_parts"]},
            completed=bool(data["completed"]),
            expire_time=None if data["expire_time"] is None else float(data["expire_time"]),
        )

    def restart(self, create_request_id: str, *, multipart: bool | None = None) -> None:
        """Forgets the server's session (expired, aborted, or refused as cut):
        the next step creates a new one with the same ciphertext."""
        self.create_request_id = create_request_id
        if multipart is not None:
            self.multipart = multipart
        self.upload_id = ""
        self.media_id = ""
        self.stored_parts = set()
        self.completed = False
        self.expire_time = None


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """Which file an upload reads: a path with its size and modification time,
    or (``path`` None) bytes the caller hands over again to resume."""

    path: str | None
    size: int
    mtime_ns: int


@dataclass(slots=True, kw_only=True)
class UploadRecord:
    """A file send under way; see the module docs."""

    request_id: str
    conversation_id: str
    source: SourceIdentity
    requested_content_type: str | None
    requested_file_name: str | None
    caption: str
    content_type: str
    file_name: str
    width: int = 0
    height: int = 0
    blurhash: str = ""
    main: ObjectUpload
    thumbnail: ObjectUpload | None = None
    thumbnail_ciphertext: bytes = field(default=b"", repr=False)
    thumbnail_width: int = 0
    thumbnail_height: int = 0
    started_at: float = 0.0

    @property
    def objects(self) -> Sequence[ObjectUpload]:
        """Thumbnail first: the message needs both, and it is the quick one."""
        return [self.main] if self.thumbnail is None else [self.thumbnail, self.main]

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def stored_bytes(self) -> int:
        """Ciphertext bytes the server already holds, as far as the record knows."""
        done = 0
        for upload in self.objects:
            if upload.completed:
                done += upload.size
            elif upload.multipart and upload.part_size:
                slices = part_slices(upload.size, upload.part_size)
                done += sum(s.size for s in slices if s.number in upload.stored_parts)
        return done

    def attachment(self) -> Attachment:
        """The pointer the message carries; every object must be completed."""
        if not all(o.completed and o.media_id for o in self.objects):
            raise ValueError("the upload is not complete")
        thumbnail = None
        if self.thumbnail is not None:
            thumbnail = Thumbnail(
                media_id=self.thumbnail.media_id,
                key=self.thumbnail.cipher.key,
                digest=self.thumbnail.sha256,
                size=self.thumbnail.size,
                content_type="image/jpeg",
                width=self.thumbnail_width,
                height=self.thumbnail_height,
            )
        return Attachment(
            media_id=self.main.media_id,
            key=self.main.cipher.key,
            digest=self.main.sha256,
            size=self.main.size,
            plaintext_size=self.main.plaintext_size,
            content_type=self.content_type,
            file_name=self.file_name,
            caption=self.caption,
            width=self.width,
            height=self.height,
            blurhash=self.blurhash,
            thumbnail=thumbnail,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _RECORD_VERSION,
                "request_id": self.request_id,
                "conversation_id": self.conversation_id,
                "source": {
                    "path": self.source.path,
                    "size": self.source.size,
                    "mtime_ns": self.source.mtime_ns,
                },
                "requested_content_type": self.requested_content_type,
                "requested_file_name": self.requested_file_name,
                "caption": self.caption,
                "content_type": self.content_type,
                "file_name": self.file_name,
                "width": self.width,
                "height": self.height,
                "blurhash": self.blurhash,
                "main": self.main.to_dict(),
                "thumbnail": None if self.thumbnail is None else self.thumbnail.to_dict(),
                "thumbnail_ciphertext": _b64(self.thumbnail_ciphertext),
                "thumbnail_width": self.thumbnail_width,
                "thumbnail_height": self.thumbnail_height,
                "started_at": self.started_at,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Self:
        """ValueError for a record this SDK cannot read (newer, or damaged)."""
        try:
            data = json.loads(text)
            if data.get("version") != _RECORD_VERSION:
                raise ValueError(f"upload record version {data.get('version')!r}")
            source = data["source"]
            thumbnail = data["thumbnail"]
            return cls(
                request_id=str(data["request_id"]),
                conversation_id=str(data["conversation_id"]),
                source=SourceIdentity(
                    None if source["path"] is None else str(source["path"]),
                    int(source["size"]),
                    int(source["mtime_ns"]),
                ),
                requested_content_type=data["requested_content_type"],
                requested_file_name=data["requested_file_name"],
                caption=str(data["caption"]),
                content_type=str(data["content_type"]),
                file_name=str(data["file_name"]),
                width=int(data["width"]),
                height=int(data["height"]),
                blurhash=str(data["blurhash"]),
                main=ObjectUpload.from_dict(data["main"]),
                thumbnail=None if thumbnail is None else ObjectUpload.from_dict(thumbnail),
                thumbnail_ciphertext=_unb64(data["thumbnail_ciphertext"]),
                thumbnail_width=int(data["thumbnail_width"]),
                thumbnail_height=int(data["thumbnail_height"]),
                started_at=float(data["started_at"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"unreadable upload record: {error!r}") from None
