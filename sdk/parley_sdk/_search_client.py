"""The client's search: its own device's index by default, the server blind index on request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from parley.message.v1 import messages_pb2
from parley.search.v1 import search_pb2
from parley_sdk._blind_tokens import BlindSettings
from parley_sdk._search_backfill import BackfillCalls, BackfillProgress, BackfillReport, backfill
from parley_sdk._search_index import (
    DEFAULT_SEARCH_PAGE_SIZE,
    SearchIndex,
    SearchPage,
    SearchResult,
)
from parley_sdk._secure_client import SecureMethods
from parley_sdk.models import ConversationView
from parley_sdk.retry import new_request_id

__all__ = ["SearchMethods"]

_BACKFILL_PAGE = 200


class SearchMethods(SecureMethods):
    """Full-text search of the messages this device read or sent, in its store
    (SQLite FTS5; nothing leaves the device). Needs a client connected with
    ``store=``; otherwise each method raises :class:`NotEncryptedError`.

    Every message the client sends, decrypts or sees edited is indexed as it
    goes; deletes (for this account or for everyone) take it out. History from
    before the index existed comes in with :meth:`backfill_search_index`.
    """

    @property
    def search_index(self) -> SearchIndex:
        """This device's index (for erasing a conversation's entries, counts, rebuilds)."""
        return self._require_e2ee().search

    async def search(
        self,
        query: str,
        *,
        conversation_id: str | None = None,
        page_size: int | None = DEFAULT_SEARCH_PAGE_SIZE,
        page_token: str | None = None,
        marks: tuple[str, str] = ("[", "]"),
        server: bool = False,
    ) -> SearchPage:
        """One page of the messages matching ``query``, newest first.

        Words are ANDed, a trailing ``*`` makes a word a prefix (``hel*``),
        ``"quoted words"`` must stand in a row. Matching ignores case and
        accents, finds ``arbre`` in ``l'arbre`` and ``Mueller`` for ``Müller``,
        and finds words inside Chinese, Japanese and Korean text (one
        character, or any run of them). ``conversation_id`` limits it to one
        conversation. Pass ``next_page_token`` of a page to get the next one
        (with the same query and conversation). Each result carries a
        ``snippet`` with the matches wrapped in ``marks``.

        Raises ``ValueError`` (:class:`QueryError`) for a query without words
        or a foreign page token, :class:`SearchUnavailableError` when this
        Python's SQLite lacks FTS5.

        ``server=True`` asks the server's blind index instead, over the
        conversations whose server search is on (:meth:`set_server_search`)
        and the epochs this device holds keys of: it finds messages this
        device never read (sent by others while it was away), never sees a
        word, and every hit is decrypted and kept only if its text matches.
        Words, spellings and phrases work as above; prefixes (``hel*``) are a
        QueryError. Page tokens of a server search last a day, on this device.
        """
        e2ee = self._require_e2ee()
        if server:
            return await e2ee.server.search(
                query,
                conversation_id=conversation_id,
                page_size=page_size,
                page_token=page_token,
                marks=marks,
            )
        return e2ee.search.search(
            query,
            conversation_id=conversation_id,
            page_size=page_size,
            page_token=page_token,
            marks=marks,
        )

    async def iter_search(
        self,
        query: str,
        *,
        conversation_id: str | None = None,
        page_size: int | None = DEFAULT_SEARCH_PAGE_SIZE,
        marks: tuple[str, str] = ("[", "]"),
        server: bool = False,
    ) -> AsyncIterator[SearchResult]:
        """Every result of :meth:`search`, newest first, a page at a time."""
        token = ""
        while True:
            page = await self.search(
                query,
                conversation_id=conversation_id,
                page_size=page_size,
                page_token=token,
                marks=marks,
                server=server,
            )
            for result in page.results:
                yield result
            token = page.next_page_token
            if not token:
                return

    async def backfill_search_index(
        self, *, progress: BackfillProgress | None = None, page_size: int = _BACKFILL_PAGE
    ) -> BackfillReport:
        """Indexes the history this device can read that is not indexed yet.

        That is every message whose plaintext the store holds (what this device
        sent or read, in every conversation it belongs to or left), and channel
        posts (not end-to-end encrypted), fetched with ListMessages oldest
        first. End-to-end encrypted history from before this device existed
        cannot be read by it and is not indexed.

        Resumable: every ``page_size`` history items (1-200) commit with a
        per-conversation checkpoint, so after a crash or kill the next call
        goes on from there; a finished backfill costs a conversation list the
        next time. ``progress(done, total)`` (sync or async) hears after every
        page how many history items of how many are walked.
        """
        e2ee = self._require_e2ee()
        size = max(1, min(page_size, _BACKFILL_PAGE))
        # The client has the list calls; this mixin alone does not know it.
        return await backfill(cast(BackfillCalls, self), e2ee, progress=progress, page_size=size)

    # -- the server blind index -------------------------------------------------------

    async def set_server_search(
        self, conversation_id: str, enabled: bool, *, request_id: str | None = None
    ) -> ConversationView:
        """Turns server search (the blind index) on or off for a conversation:
        in a direct conversation either member, in a group its admins. Every
        member sees the change as a system message. Turning it on starts a
        new search key, made by this device and sent to the members' devices
        end-to-end encrypted; turning it off makes the server drop the
        conversation's postings. Off by default."""
        request = messages_pb2.SetServerSearchRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            enabled=enabled,
        )
        view: ConversationView = await self._session.unary(
            self._session.messages.SetServerSearch, request
        )
        if enabled and self._e2ee is not None:
            await self._e2ee.server.after_change(conversation_id, view.conversation.last_seq)
        return view

    async def search_settings(self) -> BlindSettings:
        """The deployment's query shape and token limits (SearchService.GetSearchSettings)."""
        return await self._require_e2ee().server.settings()

    async def _search_settings(self) -> search_pb2.SearchSettings:
        return await self._session.unary(
            self._session.search.GetSearchSettings, search_pb2.GetSearchSettingsRequest()
        )

    async def _index_message(
        self, request: search_pb2.IndexMessageRequest
    ) -> search_pb2.IndexMessageResponse:
        return await self._session.unary(self._session.search.IndexMessage, request)

    async def _remove_message(self, conversation_id: str, message_id: str) -> None:
        request = search_pb2.RemoveMessageRequest(
            conversation_id=conversation_id, message_id=message_id
        )
        await self._session.unary(self._session.search.RemoveMessage, request)

    async def _search_blind(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        return await self._session.unary(self._session.search.Search, request)
