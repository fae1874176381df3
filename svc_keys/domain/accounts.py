"""Sign-up, devices and their tokens.

Every method takes ``now`` (Unix seconds) so the policy is testable with any
clock. The access token is a signed JWT (stateless, checked by every service);
the refresh token is ``<device_id>.<secret>``, stored only as a SHA-256 hash and
rotated on every use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from parley_core.auth.tokens import TokenIssuer
from parley_core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unauthenticated,
)
from parley_core.ids import new_id
from parley_core.limits import Limiter, LimitName, Take
from parley_core.regions import RegionMap, forwarded_twice
from svc_keys.domain.handles import handle_key, handle_problem
from svc_keys.domain.keys import KeysHandler
from svc_keys.domain.regions import (
    HandleRegistry,
    handle_taken,
    home_for_sign_up,
    home_of,
)
from svc_keys.model import (
    Account,
    Credentials,
    Device,
    DeviceSession,
    HandleTaken,
    SignUpForward,
    SignupRequestSeen,
)
from svc_keys.ports import RegionPeers, Revocations
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.erasures import ErasureStore


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AccountsHandler:
    def __init__(
        self,
        store: AccountStore,
        issuer: TokenIssuer,
        revocations: Revocations,
        keys: KeysHandler,
        *,
        limiter: Limiter,
        max_devices: int,
        refresh_ttl_seconds: int,
        erasures: ErasureStore | None = None,
        regions: Callable[[], RegionMap] = RegionMap.single,
        handles: HandleRegistry | None = None,
        peers: RegionPeers | None = None,
    ) -> None:
        self._erasures = erasures
        self._regions = regions
        self._handles = handles
        self._peers = peers
        self._limiter = limiter
        self._store = store
        self._issuer = issuer
        self._revocations = revocations
        self._keys = keys
        self._max_devices = max_devices
        self._refresh_ttl = refresh_ttl_seconds

    # -- credentials -------------------------------------------------------

    def _new_refresh(self, device_id: str, now: float) -> tuple[str, str, float]:
        secret = secrets.token_urlsafe(32)
        return f"{device_id}.{secret}", _hash(secret), now + self._refresh_ttl

    def _credentials(
        self, device: Device, *, refresh_token: str, refresh_expires_at: float, now: float
    ) -> Credentials:
        access = self._issuer.issue(
            account_id=device.account_id, device_id=device.device_id, now=now
        )
        return Credentials(
            access_token=access.token,
            access_expires_at=access.expires_at,
            refresh_token=refresh_token,
            refresh_expires_at=refresh_expires_at,
        )

    async def _reissue(self, account: Account, device: Device, now: float) -> DeviceSession:
        """A retried create: same device, fresh credentials (the originals were
        never stored in a readable form)."""
        token, token_hash, expires = self._new_refresh(device.device_id, now)
        await self._store.set_refresh(
            device.device_id, new_hash=token_hash, new_expires_at=_at(expires)
        )
        credentials = self._credentials(
            device, refresh_token=token, refresh_expires_at=expires, now=now
        )
        return DeviceSession(account=account, device=device, credentials=credentials)

    async def _create_device(
        self, account: Account, *, name: str, platform: int, request_id: str, now: float
    ) -> tuple[DeviceSession, bool]:
        """The device session, and whether this call created the device (False
        when an earlier attempt with the same request_id already had)."""
        device = Device(
            device_id=new_id(int(now * 1000), region_number=self._regions().self_number),
            account_id=account.account_id,
            name=name,
            platform=platform,
            created_at=_at(now),
        )
        token, token_hash, expires = self._new_refresh(device.device_id, now)
        inserted = await self._store.insert_device(
            device, request_id=request_id, refresh_hash=token_hash, refresh_expires_at=_at(expires)
        )
        if not inserted:
            existing = await self._store.device_by_request(account.account_id, request_id)
            if existing is None or existing.revoked_at is not None:
                raise AlreadyExists("this request_id was used for a device that is now revoked")
            return await self._reissue(account, existing, now), False
        credentials = self._credentials(
            device, refresh_token=token, refresh_expires_at=expires, now=now
        )
        return DeviceSession(account=account, device=device, credentials=credentials), True

    # -- RPCs --------------------------------------------------------------

    async def sign_up(
        self,
        *,
        request_id: str,
        handle: str,
        display_name: str,
        device_name: str,
        platform: int,
        client_address: str,
        now: float,
        home_region: str = "",
        forwarded: bool = False,
    ) -> DeviceSession:
        """``client_address``: the key of the caller's address (rpc/address.py).
        ``home_region``: as asked for (empty: here); ``forwarded``: the request
        came from another region, which must not happen twice."""
        problem = handle_problem(handle)
        if problem is not None:
            raise InvalidArgument.field("handle", problem)
        regions = self._regions()
        home = home_for_sign_up(regions, home_region)
        if home != regions.self_region:
            if forwarded or self._peers is None:
                raise forwarded_twice("an account homed there", home)
            return await self._peers.sign_up(
                home,
                SignUpForward(
                    request_id=request_id,
                    handle=handle,
                    display_name=display_name,
                    device_name=device_name,
                    platform=platform,
                    client_address=client_address,
                ),
            )
        # One tag for both, so one script call; every sign-up shares the
        # overall bucket anyway.
        refusal = await self._limiter.check(
            Take(LimitName.SIGNUP_PER_ADDRESS, "signup", key=client_address),
            Take(LimitName.SIGNUP_OVERALL, "signup"),
            now=now,
        )
        # A retry of a sign-up that went through is answered, never refused.
        if refusal is not None and await self._store.account_by_signup_request(request_id) is None:
            raise self._limiter.refuse(refusal)
        if await self._handle_held(handle, now):
            raise handle_taken(handle)
        account_id = new_id(int(now * 1000), region_number=regions.self_number)
        if self._handles is not None:
            reservation = await self._handles.reserve(
                handle=handle,
                account_id=account_id,
                home_region=home,
                request_id=request_id,
                now=now,
            )
            account_id = reservation.account_id
        account = Account(
            account_id=account_id,
            handle=handle,
            display_name=display_name,
            created_at=_at(now),
        )
        try:
            await self._store.insert_account(
                account, handle_key=handle_key(handle), request_id=request_id
            )
        except (SignupRequestSeen, HandleTaken):
            # A handle clash may still be our own retry: the request id decides.
            previous = await self._store.account_by_signup_request(request_id)
            if previous is None:
                raise AlreadyExists(
                    f"the handle {handle!r} is taken", reason=Reason.HANDLE_TAKEN
                ) from None
            if handle_key(previous.handle) != handle_key(handle):
                raise AlreadyExists(
                    "this request_id was already used to sign up another handle"
                ) from None
            account = previous
        else:
            if await self._handle_held(handle, now):
                # An erasure placed its hold between the check above and
                # this insert: the hold wins.
                await self._store.delete_account(account.account_id)
                raise AlreadyExists(f"the handle {handle!r} is taken", reason=Reason.HANDLE_TAKEN)
        session, _created = await self._create_device(
            account, name=device_name, platform=platform, request_id=request_id, now=now
        )
        return session

    def home_region(self, account_id: str) -> str:
        return home_of(self._regions(), account_id)

    async def _handle_held(self, handle: str, now: float) -> bool:
        """The handle belonged to an erased account and is still cooling off."""
        if self._erasures is None:
            return False
        return await self._erasures.handle_held(handle_key(handle), now=_at(now))

    async def register_device(
        self, *, account_id: str, request_id: str, name: str, platform: int, now: float
    ) -> DeviceSession:
        account = await self._store.account_by_id(account_id)
        if account is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        existing = await self._store.device_by_request(account_id, request_id)
        if existing is not None and existing.revoked_at is None:
            return await self._reissue(account, existing, now)
        # After the replay check: a retry of a registration is never refused.
        await self._limiter.take(Take(LimitName.DEVICE_REGISTER_PER_ACCOUNT, account_id), now=now)
        if not await self._store.reserve_device_slot(account_id, cap=self._max_devices):
            active = await self._store.recount_device_slots(account_id)
            if active >= self._max_devices or not await self._store.reserve_device_slot(
                account_id, cap=self._max_devices
            ):
                raise ResourceExhausted(
                    f"an account may have at most {self._max_devices} devices; "
                    "revoke one before linking another",
                    reason=Reason.DEVICE_LIMIT_REACHED,
                )
        try:
            session, created = await self._create_device(
                account, name=name, platform=platform, request_id=request_id, now=now
            )
        except BaseException:
            await self._store.release_device_slot(account_id)
            raise
        if not created:
            # A concurrent retry created it first; our reserved slot is spare.
            await self._store.release_device_slot(account_id)
        return session

    async def refresh(self, *, refresh_token: str, client_address: str, now: float) -> Credentials:
        def invalid(why: str) -> Unauthenticated:
            return Unauthenticated(why, reason=Reason.REFRESH_TOKEN_INVALID)

        device_id, _, secret = refresh_token.partition(".")
        if not device_id or not secret:
            raise invalid("malformed refresh token")
        # Before the token is looked up, so guessing tokens is held to the
        # address's budget. The device is the one the token names, unchecked:
        # a made-up one only spends its own bucket.
        await self._limiter.take(
            Take(LimitName.REFRESH_PER_ADDRESS, client_address),
            Take(LimitName.REFRESH_PER_DEVICE, device_id),
            now=now,
        )
        try:
            device, stored_hash, expires_at = await self._store.refresh_state(device_id)
        except KeyError:
            raise invalid("unknown refresh token") from None
        if device.revoked_at is not None:
            raise Unauthenticated("this device was signed out", reason=Reason.TOKEN_REVOKED)
        presented = _hash(secret)
        if stored_hash is None or not hmac.compare_digest(presented, stored_hash):
            raise invalid("refresh token is not current (already used or replaced)")
        if expires_at is None or expires_at.timestamp() <= now:
            raise Unauthenticated("refresh token expired", reason=Reason.TOKEN_EXPIRED)
        token, token_hash, expires = self._new_refresh(device.device_id, now)
        if not await self._store.rotate_refresh(
            device.device_id,
            expected_hash=stored_hash,
            new_hash=token_hash,
            new_expires_at=_at(expires),
        ):
            raise invalid("refresh token is not current (already used or replaced)")
        return self._credentials(device, refresh_token=token, refresh_expires_at=expires, now=now)

    async def revoke_device(self, *, account_id: str, device_id: str, now: float) -> None:
        device = await self._store.device_by_id(device_id)
        if device is None or device.account_id != account_id:
            raise NotFound("no such device on this account", reason=Reason.DEVICE_NOT_FOUND)
        if await self._store.revoke_device(device_id, now=_at(now)):
            await self._store.release_device_slot(account_id)
        # Recorded even on a repeat, so a lost publish is made good by a retry.
        await self._revocations.revoke_device(device_id, now=now)
        # After revoking, so its tokens are refused and it cannot re-add keys
        # behind the deletion (bundles skip revoked devices meanwhile); a
        # repeated RevokeDevice finishes a deletion cut short.
        await self._keys.forget_device(device_id)

    async def list_devices(
        self, *, account_id: str, after_device_id: str | None, limit: int
    ) -> list[Device]:
        return await self._store.list_devices(
            account_id, after_device_id=after_device_id, limit=limit
        )

    async def get_account(
        self,
        *,
        account_id: str | None = None,
        handle: str | None = None,
        bearer_token: str = "",
        forwarded: bool = False,
    ) -> Account:
        """By id or handle, from whichever region holds it: the handle's
        registrar names the account, the account's home region has it."""
        if handle is not None and self._handles is not None:
            account_id = await self._handles.holder(handle)
            if account_id is not None:
                handle = None
        if handle is not None:
            account = await self._store.account_by_handle_key(handle_key(handle))
        else:
            account_id = account_id or ""
            regions = self._regions()
            home = home_of(regions, account_id)
            if home not in ("", regions.self_region):
                if forwarded or self._peers is None:
                    raise forwarded_twice("that account", home)
                return await self._peers.get_account(home, account_id, bearer_token=bearer_token)
            account = await self._store.account_by_id(account_id)
        if account is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        return account
