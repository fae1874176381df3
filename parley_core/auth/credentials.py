"""Credentials that are not an account's access token.

- The service credential: one random secret per deployment, shared by the
  services, for the internal RPCs they call on each other when no user is
  behind the call (a sweeper asking whether media is still referenced) or
  when the callee must trust the caller's word about an account. It is read
  from a file (a Kubernetes Secret mounted as a file), never from config text.
- Operator credentials: tokens held by people who run the deployment, for
  administrative RPCs (quarantining media). The config lists a name and the
  SHA-256 of each token, so the file the services read never holds a token;
  the name is what audit logs record.

An access token is never accepted where one of these is required, and the
other way round: the two are verified by different code paths, chosen by the
RPC's service, not by the token's shape.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from parley_core.errors import Unauthenticated


class PrincipalKind(Enum):
    SERVICE = "service"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called a privileged RPC: a Parley service or a named operator."""

    kind: PrincipalKind
    name: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class ServiceCredential:
    """The deployment's service token: sent on internal calls, checked on
    internal RPCs."""

    def __init__(self, token: str) -> None:
        if len(token) < 32:
            raise ValueError("the service token must be at least 32 characters")
        self._token = token
        self._digest = _digest(token)

    @classmethod
    def from_file(cls, path: Path) -> ServiceCredential:
        return cls(path.read_text().strip())

    @property
    def bearer_token(self) -> str:
        """The token itself, for clients that set their own metadata."""
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for an outgoing internal call."""
        return (("authorization", f"Bearer {self._token}"),)

    def verify(self, token: str) -> Principal:
        # Compared as digests, in constant time: the length of the presented
        # token tells nothing about the real one.
        if not hmac.compare_digest(_digest(token), self._digest):
            raise Unauthenticated("this RPC is internal: it needs the service credential")
        return Principal(PrincipalKind.SERVICE, "service")


class OperatorCredentials:
    """Named operator tokens, known by their SHA-256 only."""

    def __init__(self, digests: dict[str, bytes]) -> None:
        self._by_digest = {digest: name for name, digest in digests.items()}

    @classmethod
    def from_file(cls, path: Path | None) -> OperatorCredentials:
        """Lines of ``<name> <sha256 hex of the token>``; ``#`` starts a comment.
        No file: no operator can call administrative RPCs."""
        digests: dict[str, bytes] = {}
        if path is None:
            return cls(digests)
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or len(parts[1]) != 64:
                raise ValueError(f"{path}:{number}: expected '<name> <sha256 hex>'")
            digests[parts[0]] = bytes.fromhex(parts[1])
        return cls(digests)

    def verify(self, token: str) -> Principal:
        presented = _digest(token)
        for digest, name in self._by_digest.items():
            if hmac.compare_digest(presented, digest):
                return Principal(PrincipalKind.OPERATOR, name)
        raise Unauthenticated("this RPC is for operators: it needs an operator credential")


def new_token() -> str:
    """A fresh random token (the local stack and tests make their own)."""
    return secrets.token_urlsafe(32)


def token_digest_hex(token: str) -> str:
    """What an operator-tokens file lists for ``token``."""
    return _digest(token).hex()
