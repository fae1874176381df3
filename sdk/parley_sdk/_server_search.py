"""The server blind index from the device's side: keys to members, tokens up, queries.

Epochs are read from the conversation's system messages (a scan that goes on
from a checkpoint); a key reaches the members of its epoch sealed pairwise in
sender-key envelopes (a Content of kind ``search_key``, never shown). Sends
and edits upload tokens (IndexMessage) when the conversation's server search
is on; deletes for everyone take them away. A query goes out in requests of
the deployment's exact shape; its hits are decrypted (or read from this
device's own index) and kept only if the text really matches. Design and
leakage: docs/design/search.md.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from parley.e2ee.v1 import e2ee_pb2
from parley.message.v1 import messages_pb2
from parley.search.v1 import search_pb2
from parley_sdk._blind_query import build_requests, pad_request, plan_query, real_group
from parley_sdk._blind_tokens import (
    KEY_BYTES,
    BlindSettings,
    EpochKey,
    Randomness,
    message_tokens,
    token_bytes_for,
)
from parley_sdk._e2ee_models import DecryptedMessage
from parley_sdk._key_models import DeviceKey, SenderKeyEnvelope
from parley_sdk._search_index import SearchIndex, SearchPage, SearchResult
from parley_sdk._search_keys import (
    EPOCH_ACTIONS,
    Epoch,
    ScanState,
    SearchKeys,
    designated_creator,
)
from parley_sdk._search_query import clamp_page_size, query_key
from parley_sdk._search_verify import Hit, verified_result
from parley_sdk._secure_calls import EncryptionCalls
from parley_sdk._secure_groups import GroupKeys
from parley_sdk.e2ee import DeviceAddress, DeviceStore, search_key_content
from parley_sdk.errors import ParleyError
from parley_sdk.models import ConversationType, Direction, SystemAction, SystemMessageEvent
from parley_sdk.retry import new_request_id
from parley_sdk.search_text import QueryError, parse_query

__all__ = ["OFF_RECHECK_SECONDS", "SCAN_LIMIT", "SearchOwner", "ServerSearch"]

SCAN_LIMIT = 50_000
"""History items a first look at a conversation reads back, at most, to find
when server search was turned on; older epochs are not searched from here."""
OFF_RECHECK_SECONDS = 30.0
"""How long a device trusts that a conversation's server search is off
before asking again (without a stream to bring the change)."""
_SCAN_PAGE = 100
_ENVELOPES_PER_CALL = 500
# A page examines at most this many hits per wanted result before it returns
# what it has (false positives and decoys cost requests, not unbounded loops).
_EXAMINED_PER_RESULT = 10

log = logging.getLogger(__name__)


class SearchOwner(Protocol):
    """The device's encryption (:class:`parley_sdk._secure.E2EE`) as the blind
    index uses it."""

    me: DeviceAddress
    store: DeviceStore
    search: SearchIndex
    groups: GroupKeys

    async def device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]: ...

    async def seal_pairwise(
        self, content: bytes, listed: Sequence[DeviceKey], wanted: Sequence[DeviceAddress]
    ) -> list[tuple[DeviceAddress, bytes]]: ...

    async def conversation(
        self, conversation_id: str
    ) -> tuple[ConversationType, tuple[str, ...]]: ...

    async def decrypt(self, message: messages_pb2.Message) -> DecryptedMessage: ...


class ServerSearch:
    """One device's side of the blind index."""

    def __init__(
        self, owner: SearchOwner, client: EncryptionCalls, *, rng: Randomness | None = None
    ) -> None:
        self._owner = owner
        self._client = client
        self.keys = SearchKeys(owner.store)
        self._rng: Randomness = rng or random.SystemRandom()
        self._settings: BlindSettings | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._off_checked: dict[str, float] = {}

    async def settings(self) -> BlindSettings:
        """The deployment's query shape (asked once per client)."""
        if self._settings is None:
            self._settings = BlindSettings.from_proto(await self._client._search_settings())
        return self._settings

    # -- epochs -------------------------------------------------------------------

    async def sync(self, conversation_id: str, through_seq: int | None = None) -> ScanState:
        """Reads the conversation's history items after the checkpoint (up to
        ``through_seq``, else to the end) and records the epochs they start."""
        state = self.keys.scan_state(conversation_id)
        if state is None:
            state = await self._first_look(conversation_id)
        if through_seq is not None and through_seq <= state.scanned_seq:
            return state
        items = []
        last = state.scanned_seq
        async for message in self._client.list_messages(
            conversation_id,
            direction=Direction.FORWARD,
            start_seq=state.scanned_seq + 1,
            page_size=_SCAN_PAGE,
        ):
            if through_seq is not None and message.seq > through_seq:
                break
            items.append(message)
            last = max(last, message.seq)
        return self.keys.record_scan(
            conversation_id, items, through_seq=last, enabled=state.enabled
        )

    async def _first_look(self, conversation_id: str) -> ScanState:
        view = await self._client.get_conversation(conversation_id)
        last_seq = int(view.conversation.last_seq)
        self._off_checked[conversation_id] = time.monotonic()
        if not view.conversation.server_search:
            return self.keys.record_scan(conversation_id, [], through_seq=last_seq, enabled=False)
        # On: read back to where it was turned on (or as far as this account sees).
        items: list[messages_pb2.Message] = []
        async for message in self._client.list_messages(
            conversation_id, direction=Direction.BACKWARD, page_size=_SCAN_PAGE
        ):
            items.append(message)
            system = message.system if message.HasField("system") else None
            turned_on = (
                system is not None
                and SystemAction(system.action) is SystemAction.SEARCH_CHANGED
                and system.server_search
            )
            if turned_on or len(items) >= SCAN_LIMIT:
                break
        items.reverse()
        through = max([last_seq, *(m.seq for m in items)])
        return self.keys.record_scan(conversation_id, items, through_seq=through, enabled=True)

    async def _members(self, conversation_id: str) -> list[messages_pb2.Member]:
        return [m async for m in self._client.list_members(conversation_id)]

    async def key_for(self, conversation_id: str, seq: int) -> EpochKey | None:
        """The key a message of ``seq`` is indexed with: the epoch's first key,
        made now if this device is to make it, or if none arrived in time."""
        async with self._locks[conversation_id]:
            epoch = self.keys.epoch_at(conversation_id, seq)
            if epoch is None:
                return None
            held = self.keys.keys_of(conversation_id, epoch.seq)
            if not held:
                # The creator may have sent it while nobody claimed it.
                await self._owner.groups.claim()
                held = self.keys.keys_of(conversation_id, epoch.seq)
            if held:
                return held[0]
            return await self._make_key(epoch, await self._members(conversation_id))

    async def _make_key(self, epoch: Epoch, members: Sequence[messages_pb2.Member]) -> EpochKey:
        settings = await self.settings()
        view = await self._client.get_conversation(epoch.conversation_id)
        expected = 2 * int(view.conversation.last_seq)
        key = EpochKey(
            epoch.conversation_id,
            epoch.seq,
            secrets.token_bytes(KEY_BYTES),
            token_bytes_for(expected, settings),
        )
        # Only those in the epoch: a member who joined later gets later keys.
        accounts = [m.account_id for m in members if m.joined_seq <= epoch.seq]
        await self._distribute(key, accounts)
        self.keys.add_key(key)
        return key

    async def _distribute(self, key: EpochKey, accounts: Sequence[str]) -> int:
        owner = self._owner
        listed = await owner.device_keys(sorted({*accounts, owner.me.account_id}))
        wanted = [
            DeviceAddress(d.account_id, d.device_id)
            for d in listed
            if (d.account_id, d.device_id) != (owner.me.account_id, owner.me.device_id)
        ]
        if not wanted:
            return 0
        content = search_key_content(
            e2ee_pb2.SearchKey(
                conversation_id=key.conversation_id,
                epoch_seq=key.epoch_seq,
                key=key.key,
                token_bytes=key.token_bytes,
            )
        )
        sealed = await owner.seal_pairwise(content, listed, wanted)
        envelopes = [SenderKeyEnvelope(a.account_id, a.device_id, copy) for a, copy in sealed]
        for start in range(0, len(envelopes), _ENVELOPES_PER_CALL):
            await self._client.send_sender_keys(
                key.conversation_id, envelopes[start : start + _ENVELOPES_PER_CALL]
            )
        return len(envelopes)

    def accept_key(self, sender: DeviceAddress, key: e2ee_pb2.SearchKey) -> bool:
        """Keeps a key a member sent (its membership was checked by the caller)."""
        if len(key.key) != KEY_BYTES or not 1 <= key.token_bytes <= 32 or key.epoch_seq < 1:
            log.warning("dropped a malformed search key from %s", sender)
            return False
        return self.keys.add_key(
            EpochKey(key.conversation_id, key.epoch_seq, key.key, key.token_bytes)
        )

    async def after_change(self, conversation_id: str, seq: int) -> None:
        """This device changed the conversation (server search on, members added
        or removed) up to ``seq``: it makes the new epoch's key now. Never raises."""
        try:
            kind, _ = await self._owner.conversation(conversation_id)
            if kind is ConversationType.CHANNEL:
                return
            state = await self.sync(conversation_id, seq)
            epoch = self.keys.epoch_at(conversation_id, state.scanned_seq)
            if state.enabled and epoch is not None:
                await self._make_if_mine(epoch)
        except (ParleyError, sqlite3.Error) as error:
            log.warning("could not start the search key of %s: %s", conversation_id, error)

    async def on_system_message(self, event: SystemMessageEvent) -> None:
        """A system message on the stream: record it, and make the key of the
        epoch it starts when this device's account is to. Never raises."""
        action = event.action
        if action is not SystemAction.SEARCH_CHANGED and action not in EPOCH_ACTIONS:
            return
        state = self.keys.scan_state(event.conversation_id)
        if action is not SystemAction.SEARCH_CHANGED and state is not None and not state.enabled:
            return
        await self.after_change(event.conversation_id, event.seq)

    async def _make_if_mine(self, epoch: Epoch) -> None:
        async with self._locks[epoch.conversation_id]:
            if not self.keys.keys_of(epoch.conversation_id, epoch.seq):
                # Another member may have made it already (this device was slow).
                await self._owner.groups.claim()
            if self.keys.keys_of(epoch.conversation_id, epoch.seq):
                return
            members = await self._members(epoch.conversation_id)
            creator = designated_creator(epoch, [(m.account_id, m.role) for m in members])
            if creator == self._owner.me.account_id:
                await self._make_key(epoch, members)

    async def _still_off(self, conversation_id: str) -> bool:
        """Whether server search is off there, asking the server at most every
        OFF_RECHECK_SECONDS: most conversations never turn it on, and their
        sends should not read history to find out (a stream's SEARCH_CHANGED
        tells at once)."""
        state = self.keys.scan_state(conversation_id)
        if state is None or state.enabled:
            return False
        now = time.monotonic()
        if now - self._off_checked.get(conversation_id, -OFF_RECHECK_SECONDS) < OFF_RECHECK_SECONDS:
            return True
        self._off_checked[conversation_id] = now
        view = await self._client.get_conversation(conversation_id)
        if view.conversation.server_search:
            return False
        self.keys.record_scan(
            conversation_id, [], through_seq=int(view.conversation.last_seq), enabled=False
        )
        return True

    # -- postings -----------------------------------------------------------------

    async def index(self, message: messages_pb2.Message, text: str) -> bool:
        """Uploads the tokens of a message this device sent or edited, when its
        conversation's server search is on; returns whether it did. Never raises."""
        conversation_id = message.conversation_id
        try:
            kind, _ = await self._owner.conversation(conversation_id)
            if kind is ConversationType.CHANNEL or await self._still_off(conversation_id):
                return False
            # The message itself starts no epoch: history up to the one before it
            # decides, and a send right after this device's last look costs no read.
            state = await self.sync(conversation_id, message.seq - 1)
            if state.scanned_seq == message.seq - 1:
                state = self.keys.record_scan(
                    conversation_id, [], through_seq=message.seq, enabled=state.enabled
                )
            if not state.enabled:
                return False
            key = await self.key_for(conversation_id, message.seq)
            if key is None:
                return False
            tokens = message_tokens(key, text, await self.settings(), self._rng)
            await self._client._index_message(
                search_pb2.IndexMessageRequest(
                    request_id=new_request_id(),
                    conversation_id=conversation_id,
                    message_id=message.message_id,
                    key_id=key.key_id,
                    tokens=tokens,
                )
            )
            return True
        except (ParleyError, sqlite3.Error) as error:
            log.warning("could not index message %s on the server: %s", message.message_id, error)
            return False

    async def remove(self, conversation_id: str, message_id: str) -> None:
        """Takes a message deleted for everyone off the server's index (it would
        drop it by itself too). Never raises."""
        state = self.keys.scan_state(conversation_id)
        if state is not None and not state.enabled:
            return
        try:
            await self._client._remove_message(conversation_id, message_id)
        except ParleyError as error:
            log.warning("could not take message %s off the server index: %s", message_id, error)

    # -- queries ------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        conversation_id: str | None,
        page_size: int | None,
        page_token: str | None,
        marks: tuple[str, str],
    ) -> SearchPage:
        parsed = parse_query(query)
        size = clamp_page_size(page_size)
        bound = query_key(query, conversation_id)
        if page_token:
            state = self.keys.load_cursor(page_token)
            if state is None or state.get("k") != bound:
                raise QueryError("page_token is not a token of this query", field="page_token")
        else:
            settings = await self.settings()
            # Keys sent while no stream was open wait among the envelopes.
            await self._owner.groups.claim()
            pool = self.keys.all_keys()
            if not pool:
                return SearchPage((), "")
            plan = plan_query(parsed, settings.tokens_per_group)
            scope = [k for k in pool if conversation_id in (None, k.conversation_id)]
            real = [real_group(k, terms, settings, self._rng) for k in scope for terms in plan]
            requests = build_requests(real, pool, settings, self._rng)
            state = {
                "k": bound,
                "last": None,
                "batches": [
                    {"request": _b64(r.SerializeToString()), "token": "", "hits": [], "done": False}
                    for r in requests
                ],
            }
        results: list[SearchResult] = []
        examined = 0
        while len(results) < size and examined < size * _EXAMINED_PER_RESULT:
            hit = await self._next_hit(state, size)
            if hit is None:
                break
            examined += 1
            result = await verified_result(hit, parsed, self._owner, self._client, marks=marks)
            if result is not None:
                results.append(result)
        batches = state["batches"]
        assert isinstance(batches, list)
        more = any(b["hits"] or not b["done"] for b in batches)
        token = ""
        if more:
            token = secrets.token_urlsafe(18)
            self.keys.save_cursor(token, state, now=time.time())
        return SearchPage(tuple(results), token)

    async def _next_hit(self, state: dict[str, object], size: int) -> Hit | None:
        """The newest hit not yet taken across the query's requests."""
        batches = state["batches"]
        assert isinstance(batches, list)
        last = state["last"]
        previous = (int(last[0]), str(last[1])) if isinstance(last, list) else None
        while True:
            for batch in batches:
                # A page may come back empty (its hits filtered) with more behind it.
                while not batch["hits"] and not batch["done"]:
                    await self._fetch(batch, size)
            waiting = [b for b in batches if b["hits"]]
            if not waiting:
                return None
            newest = max(waiting, key=lambda b: tuple(b["hits"][0][:2]))
            raw = newest["hits"].pop(0)
            hit = Hit(int(raw[0]), str(raw[1]), str(raw[2]), int(raw[3]))
            # The same message may hit under two keys or spellings: once only.
            if previous is not None and (hit.sent_us, hit.message_id) >= previous:
                continue
            previous = (hit.sent_us, hit.message_id)
            state["last"] = [hit.sent_us, hit.message_id]
            return hit

    async def _fetch(self, batch: dict[str, object], size: int) -> None:
        request = search_pb2.SearchRequest.FromString(_unb64(str(batch["request"])))
        request.page_size = size
        request.page_token = str(batch["token"])
        response = await self._client._search_blind(pad_request(request))
        batch["hits"] = [
            [
                hit.send_time.seconds * 1_000_000 + hit.send_time.nanos // 1000,
                hit.message_id,
                hit.conversation_id,
                hit.seq,
            ]
            for hit in response.hits
        ]
        batch["token"] = response.next_page_token
        batch["done"] = not response.next_page_token


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
