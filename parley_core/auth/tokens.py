"""Signed, expiring access tokens (JWT, EdDSA over Ed25519).

Only svc_keys holds the private key and issues tokens; every service verifies
them with the public keys from config, so a verifying service cannot mint one.
The ``kid`` header names the key, which lets operators rotate keys.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from parley_core.auth.caller import Caller
from parley_core.auth.revocations import RevocationList
from parley_core.errors import Reason, Unauthenticated
from parley_core.ids import new_id

ISSUER = "parley"
ALGORITHM = "EdDSA"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} does not hold an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def write_key_pair(private_path: Path, public_path: Path) -> None:
    """Create a fresh signing key pair (used by the local stack and tests)."""
    private = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int


class TokenIssuer:
    def __init__(self, private_key: Ed25519PrivateKey, *, ttl_seconds: int) -> None:
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self._ttl = ttl_seconds

    def issue(self, *, account_id: str, device_id: str, now: float) -> IssuedToken:
        token_id = new_id()
        issued_at = int(now)
        expires_at = issued_at + self._ttl
        claims = {
            "iss": ISSUER,
            "sub": account_id,
            "did": device_id,
            "jti": token_id,
            "iat": issued_at,
            "exp": expires_at,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return IssuedToken(token=token, token_id=token_id, expires_at=expires_at)


class TokenVerifier:
    """Verifies access tokens and checks them against the revocation list.

    Signature checks are cached per token string (bounded LRU), so a device that
    makes many calls pays for the Ed25519 verification once; expiry and
    revocation are checked on every call.
    """

    def __init__(
        self,
        public_keys: dict[str, Ed25519PublicKey],
        revocations: RevocationList,
        *,
        cache_size: int = 50_000,
    ) -> None:
        if not public_keys:
            raise ValueError("at least one public key is needed to verify tokens")
        self._keys = public_keys
        self._revocations = revocations
        self._cache: OrderedDict[str, tuple[Caller, int]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, *, now: float) -> Caller:
        cached = self._cache.get(token)
        if cached is None:
            cached = self._verify_signature(token, now=now)
            self._cache[token] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        caller, issued_at = cached
        if caller.expires_at <= now:
            self._cache.pop(token, None)
            raise Unauthenticated("access token expired", reason=Reason.TOKEN_EXPIRED)
        if self._revocations.is_revoked(device_id=caller.device_id, issued_at=issued_at):
            raise Unauthenticated("access token revoked", reason=Reason.TOKEN_REVOKED)
        return caller

    def _verify_signature(self, token: str, *, now: float) -> tuple[Caller, int]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed access token") from None
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("access token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "iss"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise Unauthenticated("access token failed verification") from None
        device_id = claims.get("did")
        if not isinstance(device_id, str) or not device_id:
            raise Unauthenticated("access token names no device")
        caller = Caller(
            account_id=str(claims["sub"]),
            device_id=device_id,
            token_id=str(claims["jti"]),
            expires_at=float(claims["exp"]),
        )
        return caller, int(claims["iat"])
