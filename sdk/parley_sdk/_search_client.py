"""The client's search over its own device's index (a client connected with a store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from parley_sdk._search_backfill import BackfillCalls, BackfillProgress, BackfillReport, backfill
from parley_sdk._search_index import (
    DEFAULT_SEARCH_PAGE_SIZE,
    SearchIndex,
    SearchPage,
    SearchResult,
)
from parley_sdk._secure_client import SecureMethods

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
        """
        return self._require_e2ee().search.search(
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
