"""Who may read media: its uploaders, and accounts svc_message says may read a
message referencing it (a member, within the history window, not deleted)."""

from __future__ import annotations

from svc_media.model import MediaRecord
from svc_media.ports import MessagePeer


class AccessCheck:
    def __init__(self, messages: MessagePeer) -> None:
        self._messages = messages

    async def may_read(self, account_id: str, media: MediaRecord) -> bool:
        if account_id in media.uploaders:
            return True
        return media.media_id in await self._messages.readable(account_id, [media.media_id])
