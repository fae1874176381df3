"""Channels, stubs, credentials and the unary call path shared by the client and streams."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import grpc
from grpc import aio

from parley.keys.v1 import accounts_pb2, accounts_pb2_grpc, keys_pb2_grpc
from parley.media.v1 import media_pb2_grpc
from parley.message.v1 import messages_pb2_grpc
from parley.presence.v1 import presence_pb2_grpc
from parley.search.v1 import search_pb2_grpc
from parley_sdk.credentials import Credentials
from parley_sdk.errors import TokenExpiredError, UnauthenticatedError, from_rpc_error
from parley_sdk.retry import RetryPolicy, call_with_retry, new_request_id

Req = TypeVar("Req")
Resp = TypeVar("Resp")

CredentialsListener = Callable[[Credentials], Awaitable[None] | None]
Metadata = tuple[tuple[str, str], ...]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Closable(Protocol):
    """A long-lived call (delivery stream, presence subscription) the session ends on close."""

    async def close(self) -> None: ...


class NotSignedInError(UnauthenticatedError):
    """A call needs credentials but the client has none (never signed in, or logged out)."""

    def __init__(self, message: str = "client has no credentials") -> None:
        super().__init__(message, code=grpc.StatusCode.UNAUTHENTICATED)


class Session:
    def __init__(
        self,
        *,
        keys_channel: aio.Channel,
        message_channel: aio.Channel,
        credentials: Credentials | None,
        retry_policy: RetryPolicy,
        stream_retry_policy: RetryPolicy,
        timeout: float | None,
        refresh_margin: timedelta,
        on_credentials_changed: CredentialsListener | None,
        presence_channel: aio.Channel | None = None,
        media_channel: aio.Channel | None = None,
        search_channel: aio.Channel | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._keys_channel = keys_channel
        self._message_channel = message_channel
        self._presence_channel = presence_channel
        self._presence: presence_pb2_grpc.PresenceServiceAsyncStub | None = None
        if presence_channel is not None:
            self._presence = presence_pb2_grpc.PresenceServiceStub(presence_channel)
        self._media_channel = media_channel
        self._media: media_pb2_grpc.MediaServiceAsyncStub | None = None
        if media_channel is not None:
            self._media = media_pb2_grpc.MediaServiceStub(media_channel)
        self._search_channel = search_channel
        self._search: search_pb2_grpc.SearchServiceAsyncStub | None = None
        if search_channel is not None:
            self._search = search_pb2_grpc.SearchServiceStub(search_channel)
        self.accounts: accounts_pb2_grpc.AccountServiceAsyncStub = (
            accounts_pb2_grpc.AccountServiceStub(keys_channel)
        )
        # The key directory is served by svc_keys beside AccountService.
        self.key_directory: keys_pb2_grpc.KeyServiceAsyncStub = keys_pb2_grpc.KeyServiceStub(
            keys_channel
        )
        self.messages: messages_pb2_grpc.MessageServiceAsyncStub = (
            messages_pb2_grpc.MessageServiceStub(message_channel)
        )
        self._credentials = credentials
        self.retry_policy = retry_policy
        self.stream_retry_policy = stream_retry_policy
        self.timeout = timeout
        self._refresh_margin = refresh_margin
        self._listener = on_credentials_changed
        self._clock = clock
        # Refresh tokens are single use, so concurrent callers must not each trade
        # the same one; the lock makes the second caller reuse the first's result.
        self._refresh_lock = asyncio.Lock()
        # (refresh token, request_id) of a refresh whose outcome we never learned:
        # asking again with the same token must reuse the id (AIP-155), or a refresh
        # the server did apply would now look like a replayed, invalid token.
        self._pending_refresh: tuple[str, str] | None = None
        # When we were handed the current access token, to know its lifetime.
        self._received: tuple[str, datetime] | None = None
        self.streams: weakref.WeakSet[Closable] = weakref.WeakSet()

    @property
    def presence(self) -> presence_pb2_grpc.PresenceServiceAsyncStub:
        if self._presence is None:
            raise RuntimeError("this session was opened without a presence channel")
        return self._presence

    @presence.setter
    def presence(self, stub: presence_pb2_grpc.PresenceServiceAsyncStub) -> None:
        self._presence = stub

    @property
    def media(self) -> media_pb2_grpc.MediaServiceAsyncStub:
        if self._media is None:
            raise RuntimeError("this session was opened without a media channel")
        return self._media

    @media.setter
    def media(self, stub: media_pb2_grpc.MediaServiceAsyncStub) -> None:
        self._media = stub

    @property
    def search(self) -> search_pb2_grpc.SearchServiceAsyncStub:
        if self._search is None:
            raise RuntimeError("this session was opened without a search channel")
        return self._search

    @search.setter
    def search(self, stub: search_pb2_grpc.SearchServiceAsyncStub) -> None:
        self._search = stub

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    async def set_credentials(self, credentials: Credentials | None, *, notify: bool) -> None:
        self._credentials = credentials
        if credentials is not None:
            self._received = (credentials.access_token, self._clock())
        if notify and credentials is not None and self._listener is not None:
            result = self._listener(credentials)
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        # Streams first: closing a channel under a stream would wake its reader
        # with a bare CancelledError instead of a clean end of iteration.
        for stream in list(self.streams):
            await stream.close()
        channels = [self._keys_channel, self._message_channel]
        if self._presence_channel is not None:
            channels.append(self._presence_channel)
        if self._media_channel is not None:
            channels.append(self._media_channel)
        if self._search_channel is not None:
            channels.append(self._search_channel)
        await asyncio.gather(*(channel.close(None) for channel in channels))

    # -- auth ---------------------------------------------------------------

    async def auth_metadata(self) -> Metadata:
        """Bearer metadata, refreshing first when the token is about to expire."""
        credentials = self._credentials
        if credentials is None:
            raise NotSignedInError()
        received_at = None
        if self._received is not None and self._received[0] == credentials.access_token:
            received_at = self._received[1]
        if credentials.needs_refresh(
            margin=self._refresh_margin, now=self._clock(), received_at=received_at
        ):
            try:
                credentials = await self.refresh(stale_access_token=credentials.access_token)
            except UnauthenticatedError:
                raise
            except Exception:
                # A proactive refresh is an optimisation: while the old token is
                # still valid, let the call go ahead with it.
                if credentials.access_token_expire_time <= self._clock():
                    raise
        return (("authorization", f"Bearer {credentials.access_token}"),)

    async def refresh(self, *, stale_access_token: str | None = None) -> Credentials:
        """Trades the refresh token for new credentials.

        With ``stale_access_token``, does nothing if the credentials already moved
        past that token (another task refreshed while we waited for the lock).
        """
        async with self._refresh_lock:
            current = self._credentials
            if current is None:
                raise NotSignedInError()
            if stale_access_token is not None and current.access_token != stale_access_token:
                return current
            request_id = new_request_id()
            if self._pending_refresh and self._pending_refresh[0] == current.refresh_token:
                request_id = self._pending_refresh[1]
            self._pending_refresh = (current.refresh_token, request_id)
            request = accounts_pb2.RefreshTokenRequest(
                request_id=request_id, refresh_token=current.refresh_token
            )
            response = await self.unary(self.accounts.RefreshToken, request, authenticated=False)
            self._pending_refresh = None
            fresh = current.rotated(response.credentials)
            await self.set_credentials(fresh, notify=True)
            return fresh

    # -- unary calls ----------------------------------------------------------

    async def _attempt(
        self,
        method: aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        metadata: Metadata,
        timeout: float | None,
    ) -> Resp:
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except aio.AioRpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error

    async def unary(
        self,
        method: aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        authenticated: bool = True,
        min_timeout: float | None = None,
    ) -> Resp:
        """One logical call: retried on UNAVAILABLE and ABORTED, refreshed once on TOKEN_EXPIRED.

        ``request`` is sent unchanged on every attempt, so a mutating request keeps
        the request_id its builder gave it. ``min_timeout`` lengthens the
        deadline of each attempt for a call known to take long (never shortens it).
        """
        refreshed = False
        timeout = self.timeout
        if timeout is not None and min_timeout is not None:
            timeout = max(timeout, min_timeout)

        async def attempt() -> Resp:
            nonlocal refreshed
            if not authenticated:
                return await self._attempt(method, request, (), timeout)
            metadata = await self.auth_metadata()
            try:
                return await self._attempt(method, request, metadata, timeout)
            except TokenExpiredError:
                # Clocks disagree or the token aged in flight: the server's word
                # wins. Only once, so a server that rejects every token can't loop.
                if refreshed:
                    raise
                await self.refresh(stale_access_token=bearer_token(metadata))
                refreshed = True
                return await self._attempt(method, request, await self.auth_metadata(), timeout)

        return await call_with_retry(attempt, policy=self.retry_policy)


def bearer_token(metadata: Metadata) -> str:
    for key, value in metadata:
        if key == "authorization":
            return value.removeprefix("Bearer ")
    return ""
