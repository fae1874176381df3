"""What the domain tells every process: a payload and who follows it.

The domain says which conversations and accounts a payload concerns; the
doorbell (storage) owns how that maps onto channels and how the span
context travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Broadcast:
    """An encoded stream event for every live stream that follows one of
    ``conversations`` or belongs to one of ``accounts``."""

    payload: bytes
    conversations: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    # The sender's span context (parley_core.telemetry); empty when untraced.
    trace: bytes = b""
