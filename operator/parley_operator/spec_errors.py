"""The error every part of the spec's parse raises (parley_operator.spec)."""

from __future__ import annotations


class SpecError(ValueError):
    """The resource asks for something the operator cannot build; the message says what."""
