"""Helpers of the media tests: a stand-in for svc_message's internal service
(served over real gRPC in the test process), ciphertext and its hashes,
presigned requests sent as a client would, and error details."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.media.v1 import media_pb2 as mpb
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from tests.users import rid

MIB = 1 << 20


class MessageStandIn(igrpc.MessageInternalServiceServicer):
    """Answers svc_media's questions the way svc_message will: who may read which
    media, and how many messages reference each. Tests set the answers."""

    def __init__(self) -> None:
        self.readable: dict[str, set[str]] = {}
        self.references: dict[str, int] = {}
        self.expected_token: str | None = None
        self.calls: list[tuple[str, Any]] = []
        self.failing = False
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        igrpc.add_MessageInternalServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def grant(self, account_id: str, *media_ids: str) -> None:
        self.readable.setdefault(account_id, set()).update(media_ids)

    def revoke(self, account_id: str, *media_ids: str) -> None:
        self.readable.get(account_id, set()).difference_update(media_ids)

    async def _check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in told to fail")
        metadata = dict(context.invocation_metadata() or ())
        if self.expected_token is not None and (
            metadata.get("authorization") != f"Bearer {self.expected_token}"
        ):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not the service credential")

    async def CheckMediaAccess(
        self, request: ipb.CheckMediaAccessRequest, context: Any
    ) -> ipb.CheckMediaAccessResponse:
        await self._check(context)
        self.calls.append(("CheckMediaAccess", request))
        allowed = self.readable.get(request.account_id, set())
        return ipb.CheckMediaAccessResponse(
            readable_media_ids=[m for m in request.media_ids if m in allowed]
        )

    async def CountMediaReferences(
        self, request: ipb.CountMediaReferencesRequest, context: Any
    ) -> ipb.CountMediaReferencesResponse:
        await self._check(context)
        self.calls.append(("CountMediaReferences", request))
        return ipb.CountMediaReferencesResponse(
            references={m: self.references.get(m, 0) for m in request.media_ids}
        )

    async def NotifyDevice(
        self, request: ipb.NotifyDeviceRequest, context: Any
    ) -> ipb.NotifyDeviceResponse:
        await self._check(context)
        self.calls.append(("NotifyDevice", request))
        return ipb.NotifyDeviceResponse()


@dataclass
class Blob:
    """Ciphertext as a client would upload it."""

    data: bytes
    part_size: int = 0
    parts: list[bytes] = field(default_factory=list)

    @classmethod
    def random(cls, size: int, *, part_size: int = 0) -> Blob:
        data = os.urandom(size)
        parts = [data[i : i + part_size] for i in range(0, size, part_size)] if part_size else []
        return cls(data, part_size, parts)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def media_id(self) -> str:
        return self.sha256.hex()

    def request(
        self, content_class: int = mpb.CONTENT_CLASS_DOCUMENT, request_id: str | None = None
    ) -> mpb.CreateUploadRequest:
        return mpb.CreateUploadRequest(
            request_id=request_id or rid(),
            size=len(self.data),
            sha256=self.sha256,
            content_class=content_class,  # type: ignore[arg-type]
            part_size=self.part_size,
            part_sha256s=[hashlib.sha256(p).digest() for p in self.parts],
        )


async def send(
    request: mpb.PresignedRequest,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> httpx.Response:
    """Send a presigned request exactly as given (its headers are signed)."""
    sent = dict(request.headers) if headers is None else headers
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.request(request.method, request.url, content=body, headers=sent)


async def upload_parts(upload: mpb.Upload, blob: Blob, numbers: Iterable[int] | None = None) -> int:
    """PUT the parts not stored yet (only ``numbers`` if given); how many were sent."""
    sent = 0
    wanted = None if numbers is None else set(numbers)
    for part in upload.parts:
        if part.stored or (wanted is not None and part.part_number not in wanted):
            continue
        reply = await send(part.request, blob.parts[part.part_number - 1])
        assert reply.status_code == 200, reply.text
        sent += 1
    return sent


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, f"no details in {error}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {error}")


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


def operator(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
