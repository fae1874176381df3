"""ParleyError -> grpc.Status with google.rpc details (AIP-193), in one place."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from parley_core.errors import (
    Code,
    InvalidArgument,
    ParleyError,
    Reason,
    ResourceExhausted,
    Unavailable,
)

ERROR_DOMAIN = "parley.dev"

GRPC_CODES: dict[Code, grpc.StatusCode] = {
    code: getattr(grpc.StatusCode, code.value) for code in Code
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(error: ParleyError) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, error.code.value), message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=str(error.reason), domain=ERROR_DOMAIN, metadata=error.metadata
    )
    status.details.append(_pack(info))
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.append(_pack(bad_request))
    if isinstance(error, ResourceExhausted | Unavailable) and error.retry_after_seconds:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """What a client sees for a bug: no text of ours, no traceback."""
    return to_grpc_status(ParleyError("internal error", reason=Reason.INTERNAL))
