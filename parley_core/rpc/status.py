"""ParleyError -> grpc.Status with google.rpc details (AIP-193), in one place;
and back, for a Parley service's answer to another one."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from parley_core.errors import (
    Aborted,
    AlreadyExists,
    Code,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ParleyError,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
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


_ERRORS: dict[str, type[ParleyError]] = {
    error.code.value: error
    for error in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unavailable,
    )
}


def error_from_status(status: status_pb2.Status) -> ParleyError | None:
    """The ParleyError another Parley service answered with (code, reason,
    metadata, field violations, retry delay), so it can be answered on as the
    same error; None when the status is not one of ours (no ErrorInfo of our
    domain, or a code no ParleyError has)."""
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    if info is None or info.domain != ERROR_DOMAIN:
        return None
    code_name = code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else ""
    error_type = _ERRORS.get(code_name)
    if error_type is None:
        return None
    try:
        reason: Reason | None = Reason(info.reason)
    except ValueError:
        reason = None  # a reason newer than this process: the code's own default
    metadata = dict(info.metadata)
    if error_type is InvalidArgument:
        error: ParleyError = InvalidArgument(
            violations or [FieldViolation("request", status.message)], reason=reason
        )
    elif error_type is ResourceExhausted:
        error = ResourceExhausted(
            status.message, reason=reason, retry_after_seconds=retry_after, metadata=metadata
        )
    elif error_type is Unavailable:
        error = Unavailable(
            status.message, reason=reason, retry_after_seconds=retry_after, metadata=metadata
        )
    else:
        error = error_type(status.message, reason=reason, metadata=metadata)
    return error
