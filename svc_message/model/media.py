"""Media as svc_message knows it: the ids messages name, never the objects
(svc_media holds those; the keys travel inside the encrypted bodies)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# SendMessageRequest.media_ids: distinct ids per message.
MAX_MEDIA_PER_MESSAGE = 16
# Longest media id accepted anywhere (svc_media's ids are much shorter).
MEDIA_ID_MAX_CHARS = 128
# MessageInternalService request sizes (internal.proto).
MAX_ACCESS_CHECK_IDS = 64
MAX_COUNTED_IDS = 256


@dataclass(frozen=True, slots=True)
class MediaReference:
    """A message not deleted for everyone that names some of the media asked
    about: where it is, and who deleted it for themselves."""

    conversation_id: str
    seq: int
    media_ids: tuple[str, ...]
    hidden_for: tuple[str, ...] = ()


class MediaNoticeKind:
    """parley.message.v1.MediaNotice.Kind"""

    RESTORE_READY = 1


@dataclass(frozen=True, slots=True)
class MediaNotice:
    """What svc_media tells one device about media it asked for."""

    kind: int
    media_id: str
    # RESTORE_READY: until when the restored copy can be downloaded.
    expire_at: datetime | None = None
