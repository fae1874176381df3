"""svc_presence's part of an account erasure (PresenceInternalService.EraseAccount).

Order: the last-seen buffer of this process is flushed first (so a record it
held cannot recreate the account's last seen after the delete), then Redis
(presence hash, due and save sets), then MongoDB: its settings, last seen,
its own contact list, and its entries on other accounts' lists (removed
through the lists' counted path, so their caps stay exact). Every step is
idempotent; svc_keys' erasure job calls again after a failure.

Another process's last-seen buffer may still hold a record of the account
for up to one flush interval; the account's devices are revoked before the
erasure starts, so no new one is made.
"""

from __future__ import annotations

from svc_presence.domain.presence import presence_unavailable
from svc_presence.domain.sweeper import SeenBuffer
from svc_presence.model import PresenceStoreDown
from svc_presence.storage.contacts import ContactStore
from svc_presence.storage.erasure import PresenceErasureStore

# Owners whose lists are fixed per round; rounds go on until none is left.
OWNERS_PER_ROUND = 500
MAX_ROUNDS = 10_000


class PresenceErasure:
    def __init__(
        self, store: PresenceErasureStore, contacts: ContactStore, buffer: SeenBuffer
    ) -> None:
        self._store = store
        self._contacts = contacts
        self._buffer = buffer

    async def erase(self, *, account_id: str) -> None:
        await self._buffer.flush()
        try:
            await self._store.forget_live(account_id)
        except PresenceStoreDown:
            raise presence_unavailable() from None
        await self._store.forget_documents(account_id)
        await self._contacts.delete_list(account_id)
        for _ in range(MAX_ROUNDS):
            owners = await self._contacts.owners_listing(account_id, limit=OWNERS_PER_ROUND)
            if not owners:
                return
            for owner in owners:
                await self._contacts.remove(owner, [account_id])
