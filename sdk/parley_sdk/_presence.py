"""Client methods for presence: heartbeats, who is online, privacy, contacts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from types import TracebackType
from typing import Self

from grpc import aio

from parley.presence.v1 import presence_pb2
from parley_sdk._paging import ClientBase, Pager
from parley_sdk._presence_models import (
    Contact,
    Presence,
    PresenceSettings,
    PresenceUpdate,
    Visibility,
    account_id_list,
)
from parley_sdk._session import Session, bearer_token
from parley_sdk.errors import ParleyError, UnavailableError
from parley_sdk.stream import Reconnects, cancel_requested

__all__ = ["OnlineKeeper", "PresenceMethods", "PresenceSubscription"]

# The server's cap on account ids per GetPresence / AddContacts / RemoveContacts.
_BATCH = 256
# A keeper whose heartbeat failed tries again after this long (or the server's
# interval, if shorter), and never more often than _MIN_INTERVAL.
_RETRY_AFTER_FAILURE = 10.0
_MIN_INTERVAL = 1.0
# Leaving keep_online() must not hang on a presence service that is down.
_GO_OFFLINE_TIMEOUT = 5.0

_SubscribeCall = aio.UnaryStreamCall[
    presence_pb2.SubscribePresenceRequest, presence_pb2.PresenceEvent
]


def _unique(account_ids: Iterable[str] | str) -> list[str]:
    return list(dict.fromkeys(account_id_list(account_ids)))


def _batches(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _BATCH] for i in range(0, len(ids), _BATCH)]


def update_presence_settings_request(
    *, online: Visibility | None, last_seen: Visibility | None, invisible: bool | None
) -> presence_pb2.UpdatePresenceSettingsRequest:
    """The wire form of :meth:`PresenceMethods.update_presence_settings` (pure, for tests)."""
    if online is None and last_seen is None and invisible is None:
        raise ValueError("pass online, last_seen, invisible or several")
    request = presence_pb2.UpdatePresenceSettingsRequest()
    if online is not None:
        request.online = presence_pb2.Visibility.ValueType(int(online))
    if last_seen is not None:
        request.last_seen = presence_pb2.Visibility.ValueType(int(last_seen))
    if invisible is not None:
        request.invisible = invisible
    return request


class PresenceMethods(ClientBase):
    """Presence: online state, last seen, privacy settings and the contact list.

    A device counts as online while it holds a delivery stream
    (:meth:`Client.events`) or heartbeats (:meth:`heartbeat`,
    :meth:`keep_online`); it goes offline one TTL after the last of those ends,
    or at once on :meth:`go_offline`. What others see of it follows each
    side's privacy settings (:meth:`update_presence_settings`); what a caller
    may not see looks exactly like an account that does not exist.

    When the presence service's store is down, these calls fail with
    ``UnavailableError`` (reason ``DEPENDENCY_UNAVAILABLE``) after the retry
    policy gave up; messaging is unaffected.
    """

    # -- this device --------------------------------------------------------------

    async def heartbeat(self) -> timedelta:
        """Keeps this device online for the server's TTL; returns when to send the
        next heartbeat. Devices holding a delivery stream need not call it."""
        response = await self._session.unary(
            self._session.presence.Heartbeat, presence_pb2.HeartbeatRequest()
        )
        interval = response.interval.ToTimedelta()
        if interval <= timedelta(0):
            interval = response.ttl.ToTimedelta() / 3
        return interval

    async def go_offline(self) -> None:
        """This device stops counting as online now (e.g. the app went to the
        background). Its delivery stream, if still open, keeps counting."""
        await self._session.unary(self._session.presence.GoOffline, presence_pb2.GoOfflineRequest())

    def keep_online(self, *, go_offline_on_exit: bool = True) -> OnlineKeeper:
        """Heartbeats in a background task for as long as the ``async with`` block runs.

        For devices that are in the foreground without a delivery stream. It
        heartbeats at once, then at the interval the server asks for; a failed
        heartbeat is retried later and reported in :attr:`OnlineKeeper.last_error`
        rather than raised, so presence trouble never ends the block. Entering
        waits for the first heartbeat (at most the client's retry policy) and
        raises only errors a retry cannot fix (e.g. ``UnauthenticatedError``).
        On exit it calls :meth:`go_offline` unless ``go_offline_on_exit=False``.

        >>> async with client.keep_online() as keeper:
        ...     await run_app()
        """
        return OnlineKeeper(self, go_offline_on_exit=go_offline_on_exit)

    # -- other users ------------------------------------------------------------------

    async def get_presence(self, account_ids: Iterable[str] | str) -> list[Presence]:
        """The presence of these accounts as this account may see it, in the
        order given (duplicates answered once).

        Accounts whose presence is not shared with you, and ids of no account,
        come back as :attr:`Availability.UNKNOWN` without ``last_seen``. Any
        number of ids may be passed: they go out in requests of up to 256.
        """
        presences: list[Presence] = []
        for batch in _batches(_unique(account_ids)):
            request = presence_pb2.GetPresenceRequest(account_ids=batch)
            response = await self._session.unary(self._session.presence.GetPresence, request)
            presences.extend(Presence.from_proto(p) for p in response.presences)
        return presences

    def subscribe_presence(self, account_ids: Iterable[str] | str) -> PresenceSubscription:
        """Live presence of up to 256 accounts: an async iterator of :class:`PresenceUpdate`.

        The first update is a snapshot of all of them; later ones hold only the
        accounts whose visible presence changed (including changes of privacy
        settings that hide or reveal someone). On UNAVAILABLE the subscription
        reconnects by itself, bounded by the client's ``stream_retry_policy``
        (the count restarts whenever an update arrives), and the first update
        after a reconnect is again a snapshot: replace what you knew with it.
        The subscription opens on first iteration; end it with :meth:`close`
        or ``async with``.
        """
        return PresenceSubscription(self._session, _unique(account_ids))

    # -- privacy ------------------------------------------------------------------------

    async def get_presence_settings(self) -> PresenceSettings:
        """This account's presence privacy settings."""
        response = await self._session.unary(
            self._session.presence.GetPresenceSettings, presence_pb2.GetPresenceSettingsRequest()
        )
        return PresenceSettings.from_proto(response)

    async def update_presence_settings(
        self,
        *,
        online: Visibility | None = None,
        last_seen: Visibility | None = None,
        invisible: bool | None = None,
    ) -> PresenceSettings:
        """Changes who may see this account's online state and last seen, and
        invisible mode; settings left as None keep their value.

        ``online`` must admit everyone ``last_seen`` admits, else
        ``InvalidArgumentError``. By reciprocity, hiding your online state (last
        seen) from someone hides theirs from you, and ``invisible=True`` hides
        you from everyone and everyone from you.
        """
        request = update_presence_settings_request(
            online=online, last_seen=last_seen, invisible=invisible
        )
        response = await self._session.unary(self._session.presence.UpdatePresenceSettings, request)
        return PresenceSettings.from_proto(response)

    # -- contacts --------------------------------------------------------------------------

    async def add_contacts(self, account_ids: Iterable[str] | str) -> int:
        """Adds accounts to this account's contact list; returns how many were new.

        Contacts are who :attr:`Visibility.CONTACTS` admits. The list is
        one-sided and holds up to 5000 accounts (then ``TooManyContactsError``).
        """
        added = 0
        for batch in _batches(_unique(account_ids)):
            request = presence_pb2.AddContactsRequest(account_ids=batch)
            response = await self._session.unary(self._session.presence.AddContacts, request)
            added += int(response.added_count)
        return added

    async def remove_contacts(self, account_ids: Iterable[str] | str) -> int:
        """Removes accounts from the contact list; returns how many were on it."""
        removed = 0
        for batch in _batches(_unique(account_ids)):
            request = presence_pb2.RemoveContactsRequest(account_ids=batch)
            response = await self._session.unary(self._session.presence.RemoveContacts, request)
            removed += int(response.removed_count)
        return removed

    def list_contacts(self, *, page_size: int | None = None) -> Pager[Contact]:
        """The contact list, oldest first, across all pages."""
        size = self._size(page_size, 1000)
        return Pager(
            self._session,
            self._session.presence.ListContacts,
            lambda token: presence_pb2.ListContactsRequest(page_size=size, page_token=token),
            "contacts",
            convert=Contact.from_proto,
        )


class PresenceSubscription:
    """Live presence of a set of accounts (:meth:`PresenceMethods.subscribe_presence`).

    Iterate it once for :class:`PresenceUpdate` values. Iteration ends when
    :meth:`close` is called (from any task) or the server ends the stream; it
    raises when a failure is not retryable or reconnecting gave up.
    """

    def __init__(self, session: Session, account_ids: list[str]) -> None:
        self._session = session
        self._request = presence_pb2.SubscribePresenceRequest(account_ids=account_ids)
        self._call: _SubscribeCall | None = None
        self._closed = False
        self._iterated = False
        self.reconnects = 0
        """How many times the subscription was re-established after a failure."""
        session.streams.add(self)

    @property
    def account_ids(self) -> tuple[str, ...]:
        return tuple(self._request.account_ids)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.streams.discard(self)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def __aiter__(self) -> AsyncIterator[PresenceUpdate]:
        if self._iterated:
            raise RuntimeError("a PresenceSubscription can be iterated only once")
        self._iterated = True
        return self._updates()

    async def _open(self) -> tuple[_SubscribeCall, str] | None:
        metadata = await self._session.auth_metadata()
        call = self._session.presence.SubscribePresence(self._request, metadata=metadata)
        if self._closed:
            # close() ran while we were fetching a token: it could not cancel this.
            call.cancel()
            return None
        self._call = call
        return call, bearer_token(metadata)

    async def _updates(self) -> AsyncIterator[PresenceUpdate]:
        reconnects = Reconnects(self._session)
        token = ""
        try:
            while not self._closed:
                try:
                    opened = await self._open()
                    if opened is None:
                        return
                    call, token = opened
                    while True:
                        response = await call.read()
                        if not isinstance(response, presence_pb2.PresenceEvent):
                            return  # grpc.aio.EOF: the server ended the stream cleanly
                        reconnects.succeeded()
                        yield PresenceUpdate.from_proto(response)
                except asyncio.CancelledError:
                    # close() from another task cancels the call: an ordinary end.
                    if self._closed and not cancel_requested():
                        return
                    raise
                except (aio.AioRpcError, ParleyError) as failure:
                    if self._closed:
                        return
                    old_call, self._call = self._call, None
                    if old_call is not None:
                        old_call.cancel()
                    await reconnects.wait_or_raise(failure, token=token)
                    self.reconnects += 1
        finally:
            if not self._closed:
                await self.close()


class OnlineKeeper:
    """Heartbeats while an ``async with`` block runs (:meth:`PresenceMethods.keep_online`)."""

    def __init__(self, methods: PresenceMethods, *, go_offline_on_exit: bool) -> None:
        self._methods = methods
        self._go_offline_on_exit = go_offline_on_exit
        self._task: asyncio.Task[None] | None = None
        self.interval: timedelta | None = None
        """The server's heartbeat interval, once a heartbeat succeeded."""
        self.last_error: ParleyError | None = None
        """Why the latest heartbeat failed; None after a success."""
        self.heartbeats = 0
        """Heartbeats the server accepted."""

    @property
    def online(self) -> bool:
        """Whether the latest heartbeat succeeded."""
        return self.heartbeats > 0 and self.last_error is None

    async def _beat(self) -> float:
        """One heartbeat; seconds until the next."""
        try:
            self.interval = await self._methods.heartbeat()
        except ParleyError as error:
            self.last_error = error
            known = self.interval.total_seconds() if self.interval else _RETRY_AFTER_FAILURE
            return max(_MIN_INTERVAL, min(known, _RETRY_AFTER_FAILURE))
        self.last_error = None
        self.heartbeats += 1
        return max(_MIN_INTERVAL, self.interval.total_seconds())

    async def _run(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            delay = await self._beat()

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("an OnlineKeeper can be entered only once")
        delay = await self._beat()
        if self.last_error is not None and not isinstance(self.last_error, UnavailableError):
            raise self.last_error
        self._task = asyncio.create_task(self._run(delay), name="parley-keep-online")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            # wait(), not `await task`: our own cancellation must still propagate.
            await asyncio.wait({task})
            # Not a heartbeat failure (those are kept in last_error): a bug.
            failure = None if task.cancelled() else task.exception()
            if failure is not None and exc is None:
                raise failure
        if self._go_offline_on_exit and self.heartbeats:
            with contextlib.suppress(ParleyError, TimeoutError):
                async with asyncio.timeout(_GO_OFFLINE_TIMEOUT):
                    await self._methods.go_offline()
