"""The in-memory revocation list every service checks tokens against.

Pure state: ``parley_core.storage.revocations`` keeps it current from MongoDB
(durable, polled) and Redis pub/sub (immediate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Revocation:
    device_id: str
    # Unix seconds; tokens of the device issued at or before this are refused.
    revoked_at: float


class RevocationList:
    def __init__(self) -> None:
        self._devices: dict[str, float] = {}

    def add(self, revocation: Revocation) -> None:
        previous = self._devices.get(revocation.device_id, 0.0)
        self._devices[revocation.device_id] = max(previous, revocation.revoked_at)

    def is_revoked(self, *, device_id: str, issued_at: float) -> bool:
        revoked_at = self._devices.get(device_id)
        return revoked_at is not None and issued_at <= revoked_at

    def forget_before(self, cutoff: float) -> None:
        """Drop entries older than any token still alive, to keep memory bounded."""
        self._devices = {d: t for d, t in self._devices.items() if t >= cutoff}

    def __len__(self) -> int:
        return len(self._devices)
