"""Request validation: collect every field violation, then fail once.

Transport code validates the wire shape of each request with a Check before the
domain sees it, so clients get INVALID_ARGUMENT with BadRequest details naming
every bad field instead of a generic failure.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Self

from parley_core.errors import FieldViolation, InvalidArgument, Reason
from parley_core.ids import is_valid_id

# Error details travel in trailing metadata, which clients cap at 8 KiB: a
# request with hundreds of bad fields is told about the first few.
MAX_VIOLATIONS = 10


class Check:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.reason: Reason | None = None
        self._more = 0

    def fail(self, field: str, description: str, *, reason: Reason | None = None) -> Self:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(FieldViolation(field, description))
        else:
            self._more += 1
        if reason is not None and self.reason is None:
            self.reason = reason
        return self

    def request_id(self, value: str, field: str = "request_id") -> Self:
        if not value:
            return self.fail(field, "required: a UUID chosen by the client and reused on retries")
        if not is_valid_id(value.lower()) or len(value) != 36:
            self.fail(field, "must be a UUID such as 0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e5f")
        return self

    def id(self, field: str, value: str, *, required: bool = True) -> Self:
        if not value:
            if required:
                self.fail(field, "required")
            return self
        if not is_valid_id(value):
            self.fail(field, "must be a lower-case UUID")
        return self

    def text(self, field: str, value: str, *, min_len: int = 0, max_len: int) -> Self:
        if len(value) < min_len:
            self.fail(field, "required" if min_len == 1 else f"at least {min_len} characters")
        elif len(value) > max_len:
            self.fail(field, f"at most {max_len} characters")
        elif any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            self.fail(field, "must not contain control characters")
        return self

    def payload(
        self, field: str, value: bytes, *, max_bytes: int, reason: Reason | None = None
    ) -> Self:
        if not value:
            self.fail(field, "required: at least 1 byte")
        elif len(value) > max_bytes:
            self.fail(field, f"at most {max_bytes} bytes, got {len(value)}", reason=reason)
        return self

    def enum(self, field: str, value: int, allowed: Collection[int]) -> Self:
        if value == 0:
            self.fail(field, "required: must not be UNSPECIFIED")
        elif value not in allowed:
            self.fail(field, f"unknown value {value}")
        return self

    def non_negative(self, field: str, value: int) -> Self:
        if value < 0:
            self.fail(field, "must not be negative")
        return self

    def page_size(self, value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
        """AIP-158: 0 means the default; above the maximum is clamped, negative is an error."""
        if value < 0:
            self.fail(field, "must not be negative")
            return default
        if value == 0:
            return default
        return min(value, maximum)

    def done(self) -> None:
        if self.violations:
            violations = list(self.violations)
            if self._more:
                violations.append(
                    FieldViolation("request", f"and {self._more} more invalid fields")
                )
            raise InvalidArgument(violations, reason=self.reason)
