"""The one error taxonomy of every service.

Domain code raises these; ``parley_core.rpc.status`` turns them into gRPC status
codes with google.rpc details in one place. Reasons are the names of
``parley.common.v1.ErrorReason`` (a unit test keeps the two in step). This module
imports nothing from gRPC so the domain layer stays free of transport types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


class Reason(enum.StrEnum):
    INVALID_FIELD = "ERROR_REASON_INVALID_FIELD"
    TOKEN_INVALID = "ERROR_REASON_TOKEN_INVALID"
    TOKEN_EXPIRED = "ERROR_REASON_TOKEN_EXPIRED"
    TOKEN_REVOKED = "ERROR_REASON_TOKEN_REVOKED"
    HANDLE_TAKEN = "ERROR_REASON_HANDLE_TAKEN"
    DEVICE_LIMIT_REACHED = "ERROR_REASON_DEVICE_LIMIT_REACHED"
    ACCOUNT_NOT_FOUND = "ERROR_REASON_ACCOUNT_NOT_FOUND"
    DEVICE_NOT_FOUND = "ERROR_REASON_DEVICE_NOT_FOUND"
    CONVERSATION_NOT_FOUND = "ERROR_REASON_CONVERSATION_NOT_FOUND"
    NOT_A_MEMBER = "ERROR_REASON_NOT_A_MEMBER"
    MESSAGE_NOT_FOUND = "ERROR_REASON_MESSAGE_NOT_FOUND"
    BODY_TOO_LARGE = "ERROR_REASON_BODY_TOO_LARGE"
    RATE_LIMITED = "ERROR_REASON_RATE_LIMITED"
    SLOW_CONSUMER = "ERROR_REASON_SLOW_CONSUMER"
    DEPENDENCY_UNAVAILABLE = "ERROR_REASON_DEPENDENCY_UNAVAILABLE"
    PAGE_TOKEN_INVALID = "ERROR_REASON_PAGE_TOKEN_INVALID"
    REFRESH_TOKEN_INVALID = "ERROR_REASON_REFRESH_TOKEN_INVALID"
    INTERNAL = "ERROR_REASON_INTERNAL"
    SHUTTING_DOWN = "ERROR_REASON_SHUTTING_DOWN"
    GROUP_FULL = "ERROR_REASON_GROUP_FULL"
    ROLE_REQUIRED = "ERROR_REASON_ROLE_REQUIRED"
    LAST_OWNER = "ERROR_REASON_LAST_OWNER"
    MESSAGE_DELETED = "ERROR_REASON_MESSAGE_DELETED"
    NOT_THE_SENDER = "ERROR_REASON_NOT_THE_SENDER"
    WRONG_CONVERSATION_TYPE = "ERROR_REASON_WRONG_CONVERSATION_TYPE"
    TOO_MANY_PINS = "ERROR_REASON_TOO_MANY_PINS"
    TOO_MANY_CONTACTS = "ERROR_REASON_TOO_MANY_CONTACTS"
    TOO_MANY_PRE_KEYS = "ERROR_REASON_TOO_MANY_PRE_KEYS"
    TOO_MANY_ENVELOPES = "ERROR_REASON_TOO_MANY_ENVELOPES"


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
    ) -> None:
        super().__init__(message, reason=reason)
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
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds
