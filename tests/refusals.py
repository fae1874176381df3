"""What a refused call carried: its code, ErrorInfo and RetryInfo.

Works on the errors of both gRPC clients (``grpc.aio.AioRpcError`` and the
blocking client's ``grpc.RpcError``): both expose code(), details() and the
trailing metadata ``rpc_status.from_call`` reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

RATE_LIMITED = "ERROR_REASON_RATE_LIMITED"
TOKEN_REVOKED = "ERROR_REASON_TOKEN_REVOKED"
# The ErrorInfo metadata key naming the limit (parley_core.limits.LIMIT_METADATA).
LIMIT = "limit"


@dataclass(frozen=True)
class Refused:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds the server asked the client to wait (google.rpc.RetryInfo); None without one.
    retry_delay: float | None = None

    @property
    def limit(self) -> str:
        return self.metadata.get(LIMIT, "")

    def describe(self) -> str:
        return (
            f"{self.code.name} reason={self.reason or '-'} limit={self.limit or '-'} "
            f"retry={self.retry_delay} {self.message!r:.200}"
        )


def refused(error: Any) -> Refused:
    """The parts of a failed call's status a client can rely on."""
    code: grpc.StatusCode = error.code()
    status = rpc_status.from_call(error)
    reason, domain, metadata, delay = "", "", {}, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return Refused(code, error.details() or "", reason, domain, metadata, delay)


def rate_limit_problem(shape: Refused, limits: Collection[str]) -> str | None:
    """Why ``shape`` is not a well-formed rate-limit refusal by one of
    ``limits``; None when it is: RESOURCE_EXHAUSTED, ErrorInfo reason
    RATE_LIMITED in the parley.dev domain naming the limit, and a RetryInfo
    asking for a positive wait."""
    if shape.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"code {shape.code.name}"
    if (shape.reason, shape.domain) != (RATE_LIMITED, "parley.dev"):
        return f"ErrorInfo {shape.domain}/{shape.reason}"
    if shape.limit not in limits:
        return f"limit {shape.limit!r}, expected one of {sorted(limits)}"
    if shape.retry_delay is None or shape.retry_delay <= 0:
        return f"RetryInfo {shape.retry_delay}"
    return None


def assert_rate_limited(error: Any, limits: Collection[str], what: str = "") -> Refused:
    shape = refused(error)
    problem = rate_limit_problem(shape, limits)
    assert problem is None, f"{what}: not a rate-limit refusal ({problem}): {shape.describe()}"
    return shape


async def until_revoked(
    call: Callable[[], Awaitable[Any]], *, service: str, timeout: float = 10.0
) -> None:
    """Calls until the answer is UNAUTHENTICATED/TOKEN_REVOKED. A revocation
    reaches each process through its revocation feed, so a call made just after
    RevokeDevice may still be served for a moment: that is retried, not failed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            if refused(error).reason == TOKEN_REVOKED:
                return
        assert time.monotonic() < deadline, f"the revocation did not reach {service}"
        await asyncio.sleep(0.05)
