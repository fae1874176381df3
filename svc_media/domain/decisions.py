"""Recent download decisions of this process: an uploader's access to its
own ready, unquarantined media, kept for a short time so that a repeated
GetDownload (another of the account's devices, a gallery scrolled back)
reads nothing from the database.

Only an uploader's access is kept: it changes only with an account erasure,
while access through a message (membership, history window, deletion) is
asked of svc_message every time. What a kept decision can miss is a
quarantine made by another process, or a collection of the media, for at
most ``ttl`` seconds: no longer than a URL handed out just before either
keeps working (``media.get_url_seconds``, which bounds ``ttl``). A
quarantine made through this process forgets every decision at once.
"""

from __future__ import annotations

from svc_media.model import MediaRecord

# How long a decision is kept, at most.
DECISION_SECONDS = 30.0
# Decisions kept at most; the oldest go first.
MAX_DECISIONS = 10_000


class DownloadDecisions:
    def __init__(self, *, ttl: float, capacity: int = MAX_DECISIONS) -> None:
        self._ttl = ttl
        self._capacity = capacity
        # (account, media id) -> (the media as read, until when it is kept).
        self._kept: dict[tuple[str, str], tuple[MediaRecord, float]] = {}

    def get(self, account_id: str, media_id: str, *, now: float) -> MediaRecord | None:
        key = (account_id, media_id)
        kept = self._kept.get(key)
        if kept is None:
            return None
        media, until = kept
        if until <= now:
            del self._kept[key]
            return None
        return media

    def keep(self, account_id: str, media: MediaRecord, *, now: float) -> None:
        if self._ttl <= 0 or account_id not in media.uploaders:
            return
        key = (account_id, media.media_id)
        self._kept.pop(key, None)
        while len(self._kept) >= self._capacity:
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (media, now + self._ttl)

    def forget_all(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)
