"""The one pager behind every paged list (AIP-158), and what client mixins share."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

from parley.message.v1 import messages_pb2
from parley_sdk._session import Session
from parley_sdk.errors import InternalError

__all__ = ["ClientBase", "MessageReceiptPager", "Pager"]

T = TypeVar("T")


class Pager(Generic[T]):
    """Every item of a paged list, fetching a page only when the previous one is used up.

    Stop iterating early to fetch no more pages. ``response`` is the newest page
    fetched (None before the first), for fields a list carries besides its items.
    Iterate a pager once; call the list method again for a fresh one.
    """

    def __init__(
        self,
        session: Session,
        method: Any,
        request_for: Callable[[str], Any],
        field: str,
        convert: Callable[[Any], T] | None = None,
    ) -> None:
        self._session = session
        self._method = method
        self._request_for = request_for
        self._field = field
        # Most lists yield the protos themselves; typed models convert each item.
        self._convert = convert
        self._items: deque[T] = deque()
        self._page_token = ""
        self._done = False
        self.response: Any | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        # A server may return an empty page with a token (items filtered out
        # after the page was cut), so keep fetching until items or the end.
        while not self._items:
            if self._done:
                raise StopAsyncIteration
            await self._fetch()
        return self._items.popleft()

    async def _fetch(self) -> None:
        sent = self._page_token
        response = await self._session.unary(self._method, self._request_for(sent))
        self.response = response
        if response.next_page_token and response.next_page_token == sent:
            # Asking again would return the same page forever.
            self._done = True
            raise InternalError("the server returned the page token it was sent")
        items = getattr(response, self._field)
        if self._convert is not None:
            items = [self._convert(item) for item in items]
        self._items.extend(items)
        self._page_token = response.next_page_token
        self._done = not self._page_token


class MessageReceiptPager(Pager[messages_pb2.MessageReceipt]):
    """Receipts of one message; the counts cover all pages and are known once the
    first page arrived (``await pager.fetch_counts()`` to get them first)."""

    @property
    def delivered_count(self) -> int | None:
        return None if self.response is None else int(self.response.delivered_count)

    @property
    def read_count(self) -> int | None:
        return None if self.response is None else int(self.response.read_count)

    async def fetch_counts(self) -> tuple[int, int]:
        """(delivered, read) over all members, fetching the first page if needed."""
        if self.response is None:
            await self._fetch()
        assert self.response is not None
        return int(self.response.delivered_count), int(self.response.read_count)


class ClientBase:
    """State the client's method groups share. Built by :class:`parley_sdk.Client`."""

    def __init__(self, session: Session, *, page_size: int) -> None:
        self._session = session
        self._page_size = page_size

    def _size(self, page_size: int | None, cap: int) -> int:
        return max(1, min(page_size or self._page_size, cap))
