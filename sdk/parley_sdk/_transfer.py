"""Presigned requests to the object store, over HTTP (httpx).

The media service hands out presigned URLs; the bytes go straight between the
client and the object store. A PUT sends exactly the headers the service
signed (Content-Length and the SHA-256 checksum among them), so the store
itself refuses a body that is not the declared one. A GET streams, and after
a dropped connection goes on from where it stopped with a Range request.
Connection failures and 5xx answers are retried under the client's
:class:`RetryPolicy`; an expired URL (403) is the caller's to renew (it asks
the media service for a fresh one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from parley.media.v1 import media_pb2
from parley_sdk.errors import MediaTransferError
from parley_sdk.retry import RetryPolicy

__all__ = ["ObjectStore", "UrlExpiredError"]

# Reading a part or a download chunk may legitimately take long on a slow
# link; connecting should not.
_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=30.0)


class UrlExpiredError(MediaTransferError):
    """The object store refused a presigned URL as expired or no longer valid (403)."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    text: str


def _failure(method: str, answer: _Answer) -> MediaTransferError:
    detail = answer.text.strip().replace("\n", " ")[:300]
    message = f"the object store refused the {method} ({answer.status}): {detail}"
    if answer.status == 403:
        return UrlExpiredError(message, status=answer.status)
    return MediaTransferError(message, status=answer.status)


class ObjectStore:
    """Presigned PUTs and GETs with retries. Given an ``httpx.AsyncClient``, it
    uses it and leaves closing it to its owner; else it makes its own."""

    def __init__(
        self,
        retry_policy: RetryPolicy,
        *,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._policy = retry_policy
        self._given = http_client
        self._own: httpx.AsyncClient | None = None
        self._sleep = sleep

    @property
    def http(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False)
        return self._own

    async def close(self) -> None:
        if self._own is not None:
            await self._own.aclose()
            self._own = None

    async def put(self, request: media_pb2.PresignedRequest, body: bytes) -> None:
        """Sends ``body`` with exactly the signed headers; retried on connection
        failures and 5xx; :class:`UrlExpiredError` on 403."""
        attempt = 1
        while True:
            try:
                response = await self.http.request(
                    request.method or "PUT",
                    request.url,
                    headers=dict(request.headers),
                    content=body,
                )
                answer = _Answer(response.status_code, response.text)
            except httpx.TransportError as error:
                if attempt >= self._policy.max_attempts:
                    raise MediaTransferError(
                        f"the object store did not answer: {error!r}"
                    ) from error
            else:
                if 200 <= answer.status < 300:
                    return
                if answer.status < 500 or attempt >= self._policy.max_attempts:
                    raise _failure("upload", answer)
            await self._sleep(self._policy.backoff(attempt))
            attempt += 1

    async def get(
        self,
        fresh_request: Callable[[], Awaitable[media_pb2.PresignedRequest]],
        *,
        size: int,
        consume: Callable[[bytes], None],
    ) -> None:
        """Streams the object's ``size`` bytes into ``consume``, in order, each
        byte once. After a dropped connection or a 5xx it asks again from the
        first byte not yet consumed (Range); an expired URL is renewed through
        ``fresh_request`` (once per failure, within the retry policy)."""
        received = 0

        def take(piece: bytes) -> None:
            nonlocal received
            if received + len(piece) > size:
                raise MediaTransferError(
                    f"the object store sent more than the {size} bytes expected", status=200
                )
            consume(piece)
            received += len(piece)

        attempt = 1
        request = await fresh_request()
        while True:
            renew = False
            before = received
            try:
                await self._get_from(request, received, take)
                if received >= size:
                    return
                failure: Exception = MediaTransferError(
                    f"the object store ended the download at byte {received} of {size}"
                )
            except UrlExpiredError as error:
                failure, renew = error, True
            except MediaTransferError as error:
                if error.status is not None and error.status < 500:
                    raise
                failure = error
            except httpx.TransportError as error:
                failure = MediaTransferError(f"the object store did not answer: {error!r}")
            if received > before:
                attempt = 1  # it moved on: only failures in a row count
            if attempt >= self._policy.max_attempts:
                raise failure
            if renew:
                request = await fresh_request()
            else:
                await self._sleep(self._policy.backoff(attempt))
            attempt += 1

    async def _get_from(
        self,
        request: media_pb2.PresignedRequest,
        offset: int,
        take: Callable[[bytes], None],
    ) -> None:
        headers = dict(request.headers)
        # Bytes as stored: a transparently decompressed body would not be them.
        headers["Accept-Encoding"] = "identity"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        async with self.http.stream(
            request.method or "GET", request.url, headers=headers
        ) as response:
            if response.status_code not in (200, 206):
                await response.aread()
                raise _failure("download", _Answer(response.status_code, response.text))
            # A store that ignored the Range sends everything again: skip what we have.
            skip = offset if (offset and response.status_code == 200) else 0
            async for piece in response.aiter_bytes():
                if skip:
                    dropped = min(skip, len(piece))
                    piece, skip = piece[dropped:], skip - dropped
                    if not piece:
                        continue
                take(piece)
