"""Typed values of files and media: attachment pointers, sent files, restores, quotas.

An :class:`Attachment` is the pointer a message's encrypted content carries
(``parley.e2ee.v1.Attachment``): where the ciphertext is (media id), its key,
digest and sizes, and what the file is. It holds the key, so treat it like
the message's plaintext; its ``repr`` leaves the keys out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from parley.e2ee.v1 import e2ee_pb2
from parley.media.v1 import media_pb2
from parley.message.v1 import messages_pb2
from parley_sdk._wire import WireEnum, aware_time

__all__ = [
    "Attachment",
    "ContentClass",
    "MediaNoticeEvent",
    "MediaNoticeKind",
    "MediaQuota",
    "PendingUpload",
    "Restore",
    "RestoreState",
    "SentFile",
    "Thumbnail",
]


class ContentClass(WireEnum):
    """Values equal ``parley.media.v1.ContentClass``: coarse, for server limits only."""

    UNSPECIFIED = 0
    IMAGE = 1
    VIDEO = 2
    AUDIO = 3
    DOCUMENT = 4
    THUMBNAIL = 5
    STICKER = 6


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """An attachment's preview: a small JPEG, encrypted and uploaded on its own."""

    media_id: str
    key: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    size: int
    content_type: str = "image/jpeg"
    width: int = 0
    height: int = 0

    def to_proto(self) -> e2ee_pb2.EncryptedThumbnail:
        return e2ee_pb2.EncryptedThumbnail(
            media_id=self.media_id,
            key=self.key,
            digest=self.digest,
            size=self.size,
            content_type=self.content_type,
            width=self.width,
            height=self.height,
        )

    @classmethod
    def from_proto(cls, proto: e2ee_pb2.EncryptedThumbnail) -> Self:
        return cls(
            media_id=proto.media_id,
            key=proto.key,
            digest=proto.digest,
            size=proto.size,
            content_type=proto.content_type,
            width=proto.width,
            height=proto.height,
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file a message carries (the attachment pointer), as its recipients read it.

    ``size`` and ``digest`` describe the ciphertext on the server;
    ``plaintext_size`` the file itself. Images have ``width``, ``height``, a
    ``blurhash`` and usually a ``thumbnail``.
    """

    media_id: str
    key: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    size: int
    plaintext_size: int
    content_type: str
    file_name: str = ""
    caption: str = ""
    width: int = 0
    height: int = 0
    blurhash: str = ""
    thumbnail: Thumbnail | None = None

    @property
    def media_ids(self) -> tuple[str, ...]:
        """What a message carrying this pointer names in ``media_ids``."""
        if self.thumbnail is None:
            return (self.media_id,)
        return (self.media_id, self.thumbnail.media_id)

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    def to_proto(self) -> e2ee_pb2.Attachment:
        proto = e2ee_pb2.Attachment(
            media_id=self.media_id,
            key=self.key,
            digest=self.digest,
            size=self.size,
            plaintext_size=self.plaintext_size,
            content_type=self.content_type,
            file_name=self.file_name,
            caption=self.caption,
            width=self.width,
            height=self.height,
            blurhash=self.blurhash,
        )
        if self.thumbnail is not None:
            proto.thumbnail.CopyFrom(self.thumbnail.to_proto())
        return proto

    @classmethod
    def from_proto(cls, proto: e2ee_pb2.Attachment) -> Self:
        return cls(
            media_id=proto.media_id,
            key=proto.key,
            digest=proto.digest,
            size=proto.size,
            plaintext_size=proto.plaintext_size,
            content_type=proto.content_type,
            file_name=proto.file_name,
            caption=proto.caption,
            width=proto.width,
            height=proto.height,
            blurhash=proto.blurhash,
            thumbnail=Thumbnail.from_proto(proto.thumbnail)
            if proto.HasField("thumbnail")
            else None,
        )


@dataclass(frozen=True, slots=True)
class SentFile:
    """What :meth:`Client.send_file` and :meth:`Client.forward` return.

    ``uploaded_bytes`` counts the ciphertext bytes this call sent to the
    object store (thumbnail included): 0 for a forward, and only the parts
    not stored yet when an interrupted upload resumed.
    """

    message: messages_pb2.Message
    attachment: Attachment
    uploaded_bytes: int

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def conversation_id(self) -> str:
        return self.message.conversation_id

    @property
    def seq(self) -> int:
        return self.message.seq


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """A file send that was interrupted (the process died, or the call failed)
    and is kept in the store until it is resumed or discarded.

    ``path`` is None when the file was handed over as bytes: only calling
    :meth:`Client.send_file` again with the same bytes and ``request_id``
    resumes it.
    """

    request_id: str
    conversation_id: str
    file_name: str
    path: str | None
    total_bytes: int
    stored_bytes: int
    started_at: datetime


class RestoreState(WireEnum):
    """Values equal ``parley.media.v1.Restore.State``."""

    UNSPECIFIED = 0
    NOT_ARCHIVED = 1
    """Not archived: download it directly."""
    QUEUED = 2
    RESTORING = 3
    READY = 4
    """Downloadable until ``expire_time``."""
    EXPIRED = 5
    """The restored copy expired: restore again."""


@dataclass(frozen=True, slots=True)
class Restore:
    """Where the restore of an archived object stands."""

    media_id: str
    state: RestoreState
    request_time: datetime | None
    ready_time: datetime | None
    expire_time: datetime | None

    @classmethod
    def from_proto(cls, proto: media_pb2.Restore) -> Self:
        return cls(
            media_id=proto.media_id,
            state=RestoreState(proto.state),
            request_time=aware_time(proto.request_time, present=proto.HasField("request_time")),
            ready_time=aware_time(proto.ready_time, present=proto.HasField("ready_time")),
            expire_time=aware_time(proto.expire_time, present=proto.HasField("expire_time")),
        )


@dataclass(frozen=True, slots=True)
class MediaQuota:
    """The caller's media quotas (ciphertext bytes)."""

    uploaded_today_bytes: int
    daily_upload_limit_bytes: int
    stored_bytes: int
    stored_limit_bytes: int

    @classmethod
    def from_proto(cls, proto: media_pb2.Quota) -> Self:
        return cls(
            uploaded_today_bytes=proto.uploaded_today_bytes,
            daily_upload_limit_bytes=proto.daily_upload_limit_bytes,
            stored_bytes=proto.stored_bytes,
            stored_limit_bytes=proto.stored_limit_bytes,
        )


class MediaNoticeKind(WireEnum):
    """Values equal ``parley.message.v1.MediaNotice.Kind``."""

    UNSPECIFIED = 0
    RESTORE_READY = 1
    """A restore this device started is done: download works until ``expire_time``."""


@dataclass(frozen=True, slots=True)
class MediaNoticeEvent:
    """About media this device asked for (never part of the feed, not replayed)."""

    kind: MediaNoticeKind
    media_id: str
    expire_time: datetime | None

    @classmethod
    def from_proto(cls, notice: messages_pb2.MediaNotice) -> Self:
        return cls(
            kind=MediaNoticeKind(notice.kind),
            media_id=notice.media_id,
            expire_time=aware_time(notice.expire_time, present=notice.HasField("expire_time")),
        )
