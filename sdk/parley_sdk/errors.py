"""Typed errors rebuilt from gRPC status codes and google.rpc details (AIP-193).

Servers attach a ``google.rpc.Status`` to every failure in the
``grpc-status-details-bin`` trailer: an ``ErrorInfo`` whose ``reason`` is a
``parley.common.v1.ErrorReason`` name, optionally ``BadRequest`` field violations
and a ``RetryInfo`` delay. Callers branch on the exception class or ``reason``,
never on the human-readable message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# Generated from the proto enum. A StrEnum, so ``error.reason ==
# ErrorReason.NOT_A_MEMBER`` works on the plain string; a reason newer than
# this SDK still arrives as its string.
from parley.common.v1.reasons import ErrorReason

ERROR_DOMAIN = "parley.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

__all__ = [
    "ERROR_DOMAIN",
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "ErrorReason",
    "FailedPreconditionError",
    "GroupFullError",
    "HandleTakenError",
    "InternalError",
    "InvalidArgumentError",
    "LastOwnerError",
    "MediaAccessDeniedError",
    "MediaArchivedError",
    "MediaNotFoundError",
    "MediaQuarantinedError",
    "MediaTransferError",
    "MessageDeletedError",
    "NotFoundError",
    "NotTheSenderError",
    "ParleyError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitedError",
    "ResourceExhaustedError",
    "RoleRequiredError",
    "TokenExpiredError",
    "TokenRevokedError",
    "TooManyContactsError",
    "TooManyEnvelopesError",
    "TooManyPinsError",
    "TooManyPreKeysError",
    "TooManyUploadsError",
    "UnauthenticatedError",
    "UnavailableError",
    "UploadIncompleteError",
    "UploadNotFoundError",
    "WrongConversationTypeError",
    "from_rpc_error",
    "from_status",
]


class ParleyError(Exception):
    """Base of every error the SDK raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        # An ErrorReason *name* (e.g. "ERROR_REASON_TOKEN_EXPIRED"), or "" when the
        # failure did not come from a Parley server (e.g. connection refused).
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = metadata or {}
        self.field_violations: list[tuple[str, str]] = field_violations or []
        self.retry_after = retry_after

    def __str__(self) -> str:
        label = self.code.name
        if self.reason:
            label = f"{label}/{self.reason.removeprefix('ERROR_REASON_')}"
        return f"{label}: {self.message}" if self.message else label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class InvalidArgumentError(ParleyError):
    pass


class UnauthenticatedError(ParleyError):
    pass


class TokenExpiredError(UnauthenticatedError):
    pass


class TokenRevokedError(UnauthenticatedError):
    pass


class PermissionDeniedError(ParleyError):
    pass


class RoleRequiredError(PermissionDeniedError):
    """The caller is a member, but their role does not allow this (e.g. a member
    managing the group, a subscriber posting to a channel)."""


class NotTheSenderError(PermissionDeniedError):
    """Only the message's sender may do this (edit; delete for everyone, unless admin)."""


class MediaAccessDeniedError(PermissionDeniedError):
    """This account may not read the media: it neither uploaded it nor may read
    a message that carries it (a media id that does not exist looks the same)."""


class NotFoundError(ParleyError):
    pass


class MediaNotFoundError(NotFoundError):
    """A message names a media id that is not a completed upload the sender may
    use: upload the file again (it may have been collected meanwhile)."""


class UploadNotFoundError(NotFoundError):
    """The upload session expired or was aborted: start the upload again."""


class AlreadyExistsError(ParleyError):
    pass


class HandleTakenError(AlreadyExistsError):
    pass


class FailedPreconditionError(ParleyError):
    pass


class LastOwnerError(FailedPreconditionError):
    """The last owner must make another member owner before leaving or stepping down."""


class MessageDeletedError(FailedPreconditionError):
    """The message was deleted for everyone: it can no longer be edited or reacted to."""


class WrongConversationTypeError(FailedPreconditionError):
    """The operation does not apply to this conversation type (e.g. adding members
    to a direct conversation, receipts of a channel)."""


class TooManyPinsError(FailedPreconditionError):
    """The inbox already has the maximum number of pinned conversations."""


class MediaArchivedError(FailedPreconditionError):
    """The object is in the archive tier: :meth:`Client.restore_media` first,
    then download once the restore is ready."""


class MediaQuarantinedError(FailedPreconditionError):
    """An operator banned this ciphertext: it can no longer be downloaded or sent."""


class UploadIncompleteError(FailedPreconditionError):
    """CompleteUpload came before every part of the upload was stored."""


class AbortedError(ParleyError):
    pass


class ResourceExhaustedError(ParleyError):
    pass


class RateLimitedError(ResourceExhaustedError):
    """A rate limit refused the call (reason ``RATE_LIMITED``): ``retry_after``
    says in how many seconds the same call can pass, ``limit`` names the limit
    (e.g. ``send_per_device``). The client's retry policy already waited as
    long as it was allowed to (``RetryPolicy.rate_limit_max_wait``)."""

    @property
    def limit(self) -> str:
        """The refusing limit's name, or "" when the server named none."""
        return self.metadata.get("limit", "")


class GroupFullError(ResourceExhaustedError):
    """The group would exceed its member cap; the message names the cap."""


class TooManyContactsError(ResourceExhaustedError):
    """The contact list is full."""


class TooManyPreKeysError(ResourceExhaustedError):
    """The device already holds the most one-time prekeys it may upload."""


class TooManyEnvelopesError(ResourceExhaustedError):
    """A recipient device holds the most unclaimed sender-key envelopes it may."""


class QuotaExceededError(ResourceExhaustedError):
    """A media quota would be exceeded: ``quota`` names it (``daily_upload_bytes``
    or ``stored_bytes``), with its ``limit_bytes`` and the ``used_bytes`` so
    far. Forwarding a file counts against no quota of the forwarder."""

    @property
    def quota(self) -> str:
        return self.metadata.get("quota", "")

    @property
    def limit_bytes(self) -> int | None:
        return _int_or_none(self.metadata.get("limit_bytes"))

    @property
    def used_bytes(self) -> int | None:
        return _int_or_none(self.metadata.get("used_bytes"))


class TooManyUploadsError(ResourceExhaustedError):
    """The account holds the most pending upload sessions it may: finish or
    abort some (:meth:`Client.resume_uploads`, :meth:`Client.discard_upload`)."""


def _int_or_none(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class UnavailableError(ParleyError):
    pass


class DeadlineExceededError(ParleyError):
    pass


class InternalError(ParleyError):
    pass


class MediaTransferError(ParleyError):
    """A presigned request to the object store failed (not a gRPC call):
    ``status`` is the HTTP status, or None when no answer came. Raised once
    the SDK's own retries of the transfer gave up."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, code=grpc.StatusCode.UNAVAILABLE)
        self.status = status


_BY_CODE: dict[grpc.StatusCode, type[ParleyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    # DATA_LOSS and UNKNOWN are server-side bugs from the caller's point of view.
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}

# Refinements only apply under the matching code, so a server that pairs a reason
# with an unexpected code still yields the class its code promises.
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[ParleyError]] = {
    (grpc.StatusCode.UNAUTHENTICATED, ErrorReason.TOKEN_EXPIRED): TokenExpiredError,
    (grpc.StatusCode.UNAUTHENTICATED, ErrorReason.TOKEN_REVOKED): TokenRevokedError,
    (grpc.StatusCode.ALREADY_EXISTS, ErrorReason.HANDLE_TAKEN): HandleTakenError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.GROUP_FULL): GroupFullError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.RATE_LIMITED): RateLimitedError,
    (grpc.StatusCode.PERMISSION_DENIED, ErrorReason.ROLE_REQUIRED): RoleRequiredError,
    (grpc.StatusCode.PERMISSION_DENIED, ErrorReason.NOT_THE_SENDER): NotTheSenderError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.LAST_OWNER): LastOwnerError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MESSAGE_DELETED): MessageDeletedError,
    (
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.WRONG_CONVERSATION_TYPE,
    ): WrongConversationTypeError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.TOO_MANY_PINS): TooManyPinsError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.TOO_MANY_CONTACTS): TooManyContactsError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.TOO_MANY_PRE_KEYS): TooManyPreKeysError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.TOO_MANY_ENVELOPES): TooManyEnvelopesError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.QUOTA_EXCEEDED): QuotaExceededError,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.TOO_MANY_UPLOADS): TooManyUploadsError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.UPLOAD_INCOMPLETE): UploadIncompleteError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_ARCHIVED): MediaArchivedError,
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MEDIA_QUARANTINED): MediaQuarantinedError,
    (grpc.StatusCode.NOT_FOUND, ErrorReason.UPLOAD_NOT_FOUND): UploadNotFoundError,
    (grpc.StatusCode.NOT_FOUND, ErrorReason.MEDIA_NOT_FOUND): MediaNotFoundError,
    (grpc.StatusCode.PERMISSION_DENIED, ErrorReason.MEDIA_ACCESS_DENIED): MediaAccessDeniedError,
}

_GRPC_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_class(code: grpc.StatusCode, reason: str) -> type[ParleyError]:
    return _BY_REASON.get((code, reason)) or _BY_CODE.get(code, ParleyError)


def from_status(status: status_pb2.Status, *, code: grpc.StatusCode | None = None) -> ParleyError:
    """Builds the typed error a ``google.rpc.Status`` describes.

    ``code`` (the transport's status code) wins over ``status.code`` when given:
    the trailer is advisory and must not turn e.g. UNAVAILABLE into something
    non-retryable.
    """
    if code is None:
        code = _GRPC_CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    reason = ""
    domain = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    retry_after: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            # A foreign domain's reason (e.g. from a proxy) is not one of ours.
            if not reason and info.domain in (ERROR_DOMAIN, ""):
                reason, domain = info.reason, info.domain
                metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            if retry_info.HasField("retry_delay"):
                retry_after = retry_info.retry_delay.ToNanoseconds() / 1e9
    return error_class(code, reason)(
        status.message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )


def _find_status(trailing_metadata: Iterable[Any] | None) -> status_pb2.Status | None:
    for item in trailing_metadata or ():
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            return status_pb2.Status.FromString(value)
        except DecodeError:
            return None
    return None


def from_rpc_error(error: grpc.RpcError) -> ParleyError:
    """Maps a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError``).

    Like ``grpc_status.rpc_status.from_call`` but lenient: a trailer whose code or
    message disagrees with the call's is still used for its details, and an
    unparsable trailer degrades to a plain code-based error instead of raising.
    """
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else None
    trailing: Iterable[Any] | None = None
    if callable(getattr(error, "trailing_metadata", None)):
        trailing = error.trailing_metadata()
    status = _find_status(trailing)
    if status is None:
        status = status_pb2.Status(code=code.value[0], message=details or "")
    elif details and not status.message:
        status.message = details
    return from_status(status, code=code)
