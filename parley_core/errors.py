"""The one error taxonomy of every service.

Domain code raises these; ``parley_core.rpc.status`` turns them into gRPC status
codes with google.rpc details in one place. Reasons are the names of
``parley.common.v1.ErrorReason``, from the pure-Python module generated beside
the proto. This module imports nothing from gRPC or protobuf so the domain
layer stays free of transport types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from parley.common.v1.reasons import ErrorReason


class Code(enum.Enum):
    """The subset of gRPC status codes the services answer with."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


# The names exist once, generated from the proto enum; ``Reason`` is the
# services' name for it.
Reason = ErrorReason


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class ParleyError(Exception):
    """Base of every error a client may see. Subclasses fix the status code."""

    code = Code.INTERNAL
    default_reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(ParleyError):
    code = Code.INVALID_ARGUMENT
    default_reason = Reason.INVALID_FIELD

    def __init__(
        self,
        violations: list[FieldViolation],
        *,
        reason: Reason | None = None,
    ) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", reason=reason)
        self.violations = violations

    @classmethod
    def field(cls, name: str, description: str, *, reason: Reason | None = None) -> InvalidArgument:
        return cls([FieldViolation(name, description)], reason=reason)


class Unauthenticated(ParleyError):
    code = Code.UNAUTHENTICATED
    default_reason = Reason.TOKEN_INVALID


class PermissionDenied(ParleyError):
    code = Code.PERMISSION_DENIED
    default_reason = Reason.NOT_A_MEMBER


class NotFound(ParleyError):
    code = Code.NOT_FOUND


class AlreadyExists(ParleyError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(ParleyError):
    code = Code.FAILED_PRECONDITION


class Aborted(ParleyError):
    code = Code.ABORTED


class ResourceExhausted(ParleyError):
    code = Code.RESOURCE_EXHAUSTED
    default_reason = Reason.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        retry_after_seconds: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(ParleyError):
    code = Code.UNAVAILABLE
    default_reason = Reason.DEPENDENCY_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        retry_after_seconds: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds
