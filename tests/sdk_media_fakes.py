"""In-memory stand-ins for the media service and its object store, so the SDK's
file methods run without servers: a MediaService that keeps sessions and
media like svc_media's contract says, and an S3-like HTTP endpoint (an httpx
MockTransport) that checks the signed length and checksum of every PUT,
answers Range GETs and can be told to fail."""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from parley.media.v1 import media_pb2
from parley_sdk import ErrorReason
from parley_sdk._e2ee_models import DecryptedMessage
from parley_sdk._media import MediaMethods
from parley_sdk._secure import E2EE
from parley_sdk.errors import ParleyError, error_class
from parley_sdk.retry import RetryPolicy
from tests.sdk_e2ee_fakes import FakeServer, device

HOST = "s3.test"
THRESHOLD = 8 * 1024 * 1024


def refuse(code: grpc.StatusCode, reason: str, message: str = "", **metadata: str) -> ParleyError:
    return error_class(code, reason)(message or reason, code=code, reason=reason, metadata=metadata)


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass
class Session:
    upload_id: str
    media_id: str
    owner: str
    size: int
    sha256: bytes
    content_class: int
    part_size: int = 0
    part_sha256s: list[bytes] = field(default_factory=list)
    completed: bool = False


class FakeObjectStore:
    """The S3 side: objects by key, PUTs verified against their signed headers."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.put_bytes = 0
        self.puts: list[str] = []
        self.gets: list[tuple[str, str | None]] = []
        # Test knobs: fail the next PUTs with these statuses, cut GETs.
        self.fail_puts: list[int] = []
        self.cut_get_after: list[int] = []
        self.expire_next_get = False
        self.corrupt: dict[str, int] = {}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        key = request.url.path.lstrip("/")
        if request.method == "PUT":
            return self._put(key, request)
        if request.method == "GET":
            return self._get(key, request)
        return httpx.Response(405)

    def _put(self, key: str, request: httpx.Request) -> httpx.Response:
        if self.fail_puts:
            return httpx.Response(self.fail_puts.pop(0), text="<Error>injected</Error>")
        body = request.content
        if int(request.headers["content-length"]) != len(body):
            return httpx.Response(400, text="<Error>IncompleteBody</Error>")
        if request.headers.get("x-amz-checksum-sha256") != checksum(body):
            return httpx.Response(400, text="<Error>BadDigest</Error>")
        self.objects[key] = body
        self.put_bytes += len(body)
        self.puts.append(key)
        return httpx.Response(200)

    def _get(self, key: str, request: httpx.Request) -> httpx.Response:
        self.gets.append((key, request.headers.get("range")))
        if self.expire_next_get:
            self.expire_next_get = False
            return httpx.Response(403, text="<Error>Request has expired</Error>")
        data = self.objects.get(key)
        if data is None:
            return httpx.Response(404, text="<Error>NoSuchKey</Error>")
        if key in self.corrupt:
            flipped = bytearray(data)
            flipped[self.corrupt[key]] ^= 0x01
            data = bytes(flipped)
        start = 0
        status = 200
        if "range" in request.headers:
            start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
            status = 206
        body = data[start:]
        if self.cut_get_after:
            return httpx.Response(status, stream=_CutStream(body, self.cut_get_after.pop(0)))
        return httpx.Response(status, content=body)


class _CutStream(httpx.AsyncByteStream):
    """A body that breaks off like a dropped connection after ``cut`` bytes."""

    def __init__(self, body: bytes, cut: int) -> None:
        self._body, self._cut = body, cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body[: self._cut]
        raise httpx.ReadError("connection reset by peer")


class FakeMediaService:
    """MediaService as media.proto describes it, for one deployment."""

    def __init__(self, objects: FakeObjectStore, *, threshold: int = THRESHOLD) -> None:
        self.objects = objects
        self.threshold = threshold
        self.sessions: dict[str, Session] = {}
        self.by_request: dict[str, str] = {}
        self.media: dict[str, Session] = {}
        self.calls: list[str] = []
        self.archived: set[str] = set()
        # Completions that finish on the server but whose answer is lost.
        self.lose_completions = 0
        self._ids = itertools.count(1)

    # Every RPC takes (request, caller) through FakeSession.
    async def CreateUpload(self, request: media_pb2.CreateUploadRequest, caller: str) -> Any:
        self.calls.append("CreateUpload")
        media_id = "m-" + request.sha256.hex()[:24]
        known = self.media.get(media_id)
        if known is not None and known.completed:
            return media_pb2.CreateUploadResponse(already_stored=self._media(known))
        if request.request_id in self.by_request:
            return media_pb2.CreateUploadResponse(
                upload=self._upload(self.sessions[self.by_request[request.request_id]])
            )
        multipart = request.size > self.threshold
        if multipart != bool(request.part_sha256s):
            field_name = "part_sha256s"
            raise _invalid(field_name, "multipart above the threshold only")
        session = Session(
            upload_id=f"u{next(self._ids)}",
            media_id=media_id,
            owner=caller,
            size=request.size,
            sha256=request.sha256,
            content_class=request.content_class,
            part_size=request.part_size if multipart else 0,
            part_sha256s=list(request.part_sha256s),
        )
        self.sessions[session.upload_id] = session
        self.by_request[request.request_id] = session.upload_id
        return media_pb2.CreateUploadResponse(upload=self._upload(session))

    async def GetUpload(self, request: media_pb2.GetUploadRequest, caller: str) -> Any:
        self.calls.append("GetUpload")
        session = self._session(request.upload_id, caller)
        if session.completed:  # only pending sessions are listed
            raise refuse(grpc.StatusCode.NOT_FOUND, ErrorReason.UPLOAD_NOT_FOUND)
        return self._upload(session)

    async def CompleteUpload(self, request: media_pb2.CompleteUploadRequest, caller: str) -> Any:
        self.calls.append("CompleteUpload")
        session = self._session(request.upload_id, caller)
        if session.completed:
            return self._media(session)
        if session.part_size:
            parts = self._parts(session)
            if not all(self._stored(session, number) for number, _, _ in parts):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.UPLOAD_INCOMPLETE)
            data = b"".join(self.objects.objects[f"{session.upload_id}/{n}"] for n, _, _ in parts)
        else:
            data = self.objects.objects.get(session.upload_id, b"")
        if len(data) != session.size or hashlib.sha256(data).digest() != session.sha256:
            raise _invalid("sha256", "the stored object does not match")
        self.objects.objects[session.media_id] = data
        session.completed = True
        self.media[session.media_id] = session
        if self.lose_completions:
            self.lose_completions -= 1
            raise refuse(grpc.StatusCode.DEADLINE_EXCEEDED, "", "deadline exceeded")
        return self._media(session)

    async def AbortUpload(self, request: media_pb2.AbortUploadRequest, caller: str) -> Any:
        self.calls.append("AbortUpload")
        self.sessions.pop(request.upload_id, None)
        return media_pb2.AbortUploadResponse()

    async def GetDownload(self, request: media_pb2.GetDownloadRequest, caller: str) -> Any:
        self.calls.append("GetDownload")
        session = self.media.get(request.media_id)
        if session is None:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, ErrorReason.MEDIA_ACCESS_DENIED)
        if request.media_id in self.archived:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_ARCHIVED)
        get = media_pb2.PresignedRequest(method="GET", url=f"http://{HOST}/{session.media_id}")
        return media_pb2.Download(media=self._media(session), get=get)

    async def RestoreMedia(self, request: media_pb2.RestoreMediaRequest, caller: str) -> Any:
        self.calls.append("RestoreMedia")
        return media_pb2.Restore(media_id=request.media_id, state=media_pb2.Restore.STATE_QUEUED)

    async def GetRestore(self, request: media_pb2.GetRestoreRequest, caller: str) -> Any:
        return media_pb2.Restore(media_id=request.media_id, state=media_pb2.Restore.STATE_READY)

    async def GetQuota(self, request: media_pb2.GetQuotaRequest, caller: str) -> Any:
        return media_pb2.Quota(stored_bytes=sum(s.size for s in self.media.values()))

    def expire(self, upload_id: str) -> None:
        """The server's sweeper aborted the session."""
        self.sessions.pop(upload_id, None)

    # -- helpers

    def _session(self, upload_id: str, caller: str) -> Session:
        session = self.sessions.get(upload_id)
        if session is None or session.owner != caller:
            raise refuse(grpc.StatusCode.NOT_FOUND, ErrorReason.UPLOAD_NOT_FOUND)
        return session

    @staticmethod
    def _parts(session: Session) -> list[tuple[int, int, int]]:
        return [
            (number, start, min(start + session.part_size, session.size))
            for number, start in enumerate(range(0, session.size, session.part_size), start=1)
        ]

    def _stored(self, session: Session, number: int) -> bool:
        return f"{session.upload_id}/{number}" in self.objects.objects

    def _upload(self, session: Session) -> media_pb2.Upload:
        upload = media_pb2.Upload(upload_id=session.upload_id, media_id=session.media_id)
        upload.expire_time.FromSeconds(4_000_000_000)
        if not session.part_size:
            upload.put.CopyFrom(_signed(session.upload_id, session.size, session.sha256))
            return upload
        upload.part_size = session.part_size
        for number, start, end in self._parts(session):
            part = upload.parts.add(part_number=number, size=end - start)
            if self._stored(session, number):
                part.stored = True
            else:
                digest = session.part_sha256s[number - 1]
                part.request.CopyFrom(_signed(f"{session.upload_id}/{number}", end - start, digest))
        return upload

    @staticmethod
    def _media(session: Session) -> media_pb2.Media:
        return media_pb2.Media(
            media_id=session.media_id,
            size=session.size,
            sha256=session.sha256,
            content_class=session.content_class,  # type: ignore[arg-type]
        )


def _signed(key: str, size: int, digest: bytes) -> media_pb2.PresignedRequest:
    headers = {
        "Content-Length": str(size),
        "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
    }
    return media_pb2.PresignedRequest(method="PUT", url=f"http://{HOST}/{key}", headers=headers)


def _invalid(field_name: str, description: str) -> ParleyError:
    error = refuse(grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.INVALID_FIELD, description)
    error.field_violations.append((field_name, description))
    return error


class _Stubs:
    """``session.media.X`` returns a callable the fake session's unary runs."""

    def __init__(self, service: FakeMediaService, caller: str) -> None:
        self._service, self._caller = service, caller

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._service, name)

        async def call(request: Any) -> Any:
            return await method(request, self._caller)

        return call


class FakeSession:
    """What MediaMethods uses of the client's Session."""

    def __init__(self, service: FakeMediaService, caller: str) -> None:
        self.media = _Stubs(service, caller)
        self.retry_policy = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)

    async def unary(self, method: Any, request: Any, **options: Any) -> Any:
        return await method(request)


class MediaDevice(MediaMethods):
    """A client's file methods over the fakes; ``e2ee`` is its encryption."""

    def __init__(self, e2ee: E2EE, service: FakeMediaService, http: httpx.AsyncClient) -> None:
        self._session = FakeSession(service, e2ee.me.account_id)  # type: ignore[assignment]
        self._page_size = 50
        self._e2ee = e2ee
        self._http_client = http

    async def received(self, conversation_id: str, server: FakeServer) -> DecryptedMessage:
        """The newest message of the conversation, as this device reads it."""
        return await self._require_e2ee().decrypt(server.messages[conversation_id][-1])


@dataclass
class World:
    server: FakeServer
    objects: FakeObjectStore
    media: FakeMediaService
    http: httpx.AsyncClient

    async def device(self, account_id: str, device_id: str, store: Any = ":memory:") -> MediaDevice:
        e2ee = device(self.server, account_id, device_id, store)
        await e2ee.ensure_keys()
        return MediaDevice(e2ee, self.media, self.http)


def new_world(*, threshold: int = THRESHOLD) -> World:
    objects = FakeObjectStore()
    return World(
        FakeServer(),
        objects,
        FakeMediaService(objects, threshold=threshold),
        httpx.AsyncClient(transport=objects.transport()),
    )


def fresh_id() -> str:
    return str(uuid.uuid4())
