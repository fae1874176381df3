"""Conversation ownership records: shard leases, the live processes, and what
a forwarded request's owner answered."""

from __future__ import annotations

from dataclasses import dataclass

# Set on a request one process forwards to the owner of its conversation: the
# owner handles it whatever its own view of ownership, so a request is
# forwarded at most once (two processes that disagree for a moment about who
# owns a shard cannot bounce it between them).
FORWARDED_METADATA = "x-parley-forwarded"


@dataclass(frozen=True, slots=True)
class ShardLease:
    """Who sequences the conversations of one shard, until when (Unix seconds).
    ``epoch`` counts the claims of the shard, so each ownership is told apart."""

    shard: int
    owner: str
    address: str
    expires_at: float
    epoch: int


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """A live svc_message process: the internal address other processes
    forward to, and whether it is shutting down (then it owns nothing)."""

    instance_id: str
    address: str
    expires_at: float
    draining: bool = False


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """One process's next step: shards to renew, give up and try to claim."""

    renew: frozenset[int]
    release: frozenset[int]
    claim: tuple[int, ...]


class OwnerUnreachable(Exception):
    """The owner process could not be reached, so the request was not handled
    there; it may be sent again (to the same or a new owner)."""


class OwnerRefused(Exception):
    """The owner answered with an error, relayed to the caller as it is:
    ``code`` is the gRPC status code number, ``status`` the serialized
    google.rpc.Status with its details (empty when the owner sent none)."""

    def __init__(self, code: int, message: str, status: bytes) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
