"""Account erasure (GDPR Art. 17): a durable job per account.

DeleteAccount records the job and revokes every device before it answers;
the rest runs in a worker of any svc_keys process. The job's document lists
the steps done, so a process killed at any point leaves a job that another
process (or the same one restarted) claims once the lease runs out and
resumes at the first step not done. Every step is idempotent, so a step cut
short is simply done again.

Steps, in order, first this region's own (each waits for the one before;
one that fails postpones the job):
- ``devices``: revoke every device (as RevokeDevice does: tokens refused
  everywhere), picking up any device registered while the job ran;
- ``keys``: identity keys, prekeys, prekey-low notices, identity-change
  notices, sender-key envelopes to and from its devices;
- ``limits``: the rate-limit buckets naming the account or its devices;
- ``account``: holds the handle for the cooling-off period (by its hash),
  releases it when this region is its registrar (else records it for the
  ``handle@<region>`` step), then deletes the devices (names, refresh token
  hashes) and the account (handle, display name);
- ``message``, ``presence``, ``media``, ``search``: the other services'
  parts, over their internal RPCs (svc_message's and svc_search's are
  called until they say done), with
  the account and device ids the job document keeps;
- ``cold``: hands the account to the archive's rewrite (ports.ColdErasure).
Then the peer regions' parts, each independent of the others (one region
cut off delays only its own steps; every other one is still tried, and the
job is postponed while any is left):
- ``message@<region>``: that region's svc_message erases its copies;
- ``handle@<region>``: the handle is released at its registrar region (the
  same end of the cooling-off as a local release);
- ``revocations@<region>``: done once that region acknowledged the
  revocations of every device of the account, so a finished job means the
  devices are refused in every region.
Then the job document is stripped of the account and device ids: what is
left is the erasure record.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from parley_core.errors import InvalidArgument, NotFound, ParleyError, Reason
from parley_core.storage.key_notices import IdentityChanges, PreKeyLows
from svc_keys.domain.handles import handle_key
from svc_keys.domain.regions import HandleRegistry
from svc_keys.model import ErasureJob
from svc_keys.ports import AccountEraser, ColdErasure, RateBuckets, Revocations
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.erasures import ErasureStore
from svc_keys.storage.keys import KeyStore
from svc_keys.storage.sender_keys import SenderKeyStore

log = structlog.get_logger(__name__)

DEVICES, KEYS, LIMITS, COLD, ACCOUNT = "devices", "keys", "limits", "cold", "account"
# A step named ``<part>@<region>`` is a peer region's part.
HANDLE_AT, REVOCATIONS_AT = "handle@", "revocations@"
# A service's part that keeps answering "not done" is given this many calls
# per claim of the job; the job then yields and resumes later.
MAX_CALLS_PER_STEP = 200
RETRY_SECONDS = 5.0


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _at_peer(step: str) -> bool:
    return "@" in step


@dataclass(frozen=True, slots=True)
class ErasureStarted:
    erasure_id: str
    handle_release_at: datetime
    cold_deadline: datetime


@dataclass(frozen=True, slots=True)
class ErasurePolicy:
    handle_cooling_off: timedelta
    cold_window: timedelta
    lease: timedelta
    poll_seconds: float
    # How long every service may take to learn of a revocation (its poll
    # interval when Redis lost the announcement): the other services' parts
    # wait that long after the devices were revoked, so no request the
    # account's tokens still passed can write behind them.
    settle: timedelta = timedelta(0)


class ErasureHandler:
    def __init__(
        self,
        store: ErasureStore,
        accounts: AccountStore,
        keys: KeyStore,
        sender_keys: SenderKeyStore,
        pre_key_lows: PreKeyLows,
        identity_changes: IdentityChanges,
        revocations: Revocations,
        *,
        erasers: Sequence[AccountEraser],
        cold: ColdErasure,
        buckets: RateBuckets,
        policy: ErasurePolicy,
        handles: HandleRegistry | None = None,
        peers: Callable[[], Sequence[str]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The handle's registrar region learns when it is free again.
        self._handles = handles
        # The peer regions in force, each owed the account's revocations.
        self._peers = peers
        self._store = store
        self._accounts = accounts
        self._keys = keys
        self._sender_keys = sender_keys
        self._lows = pre_key_lows
        self._identity_changes = identity_changes
        self._revocations = revocations
        self._erasers = list(erasers)
        self._cold = cold
        self._buckets = buckets
        self._policy = policy
        self._clock = clock
        self._holder = secrets.token_hex(8)
        self._wake = asyncio.Event()
        # Metrics: jobs this process finished, and steps it had to postpone.
        self.finished = 0
        self.postponed = 0
        # Its own stores first: a service that stays down (a deployment
        # that named a svc_media it does not run) then holds back only its
        # own part, never the account's keys and profile.
        self.local_steps = (
            DEVICES,
            KEYS,
            LIMITS,
            ACCOUNT,
            *(e.step for e in self._erasers if not _at_peer(e.step)),
            COLD,
        )
        self._peer_erasers = tuple(e.step for e in self._erasers if _at_peer(e.step))

    def steps_of(self, job: ErasureJob) -> tuple[str, ...]:
        """The job's steps in order: this region's, then the peer regions'
        (the revocations last, of the peers in force now)."""
        handle = () if job.handle_registrar is None else (HANDLE_AT + job.handle_registrar,)
        revocations = tuple(REVOCATIONS_AT + peer for peer in self._peers())
        return (*self.local_steps, *self._peer_erasers, *handle, *revocations)

    # -- the RPC -----------------------------------------------------------

    async def delete_account(
        self, *, account_id: str, confirm_handle: str, now: float
    ) -> ErasureStarted:
        account = await self._accounts.account_by_id(account_id)
        if account is None:
            job = await self._store.of_account(account_id)
            if job is None:
                raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
            return ErasureStarted(job.erasure_id, job.handle_release_at, job.cold_deadline)
        if handle_key(confirm_handle) != handle_key(account.handle):
            raise InvalidArgument.field("confirm_handle", "is not this account's handle")
        at = _at(now)
        job = await self._store.start(
            ErasureJob(
                erasure_id=str(uuid.uuid4()),
                account_id=account_id,
                device_ids=tuple(await self._accounts.device_ids_of(account_id)),
                steps=(),
                created_at=at,
                cold_deadline=at + self._policy.cold_window,
                handle_release_at=at + self._policy.handle_cooling_off,
            ),
            holder=self._holder,
            lease_until=at + self._policy.lease,
        )
        # Before the answer: the caller is signed out everywhere once it has one.
        await self._revoke_devices(job, now=now)
        await self._store.step_done(job.erasure_id, DEVICES)
        self._wake.set()
        return ErasureStarted(job.erasure_id, job.handle_release_at, job.cold_deadline)

    # -- the worker --------------------------------------------------------

    async def run(self) -> None:
        """Claim and drive jobs for the life of the process."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store outage: the next round retries
                log.warning("erasure_round_failed", error=str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._policy.poll_seconds)

    async def run_once(self, *, max_jobs: int = 100) -> int:
        """Drive the jobs that are free to claim now; the number finished."""
        finished = 0
        for _ in range(max_jobs):
            job = await self._store.claim(
                holder=self._holder, now=_at(self._clock()), lease=self._policy.lease
            )
            if job is None:
                break
            if await self._drive(job):
                finished += 1
        return finished

    async def _drive(self, job: ErasureJob) -> bool:
        done = set(job.steps)
        try:
            for step in self.local_steps:
                if step in done:
                    continue
                job = await self._step(step, job)
                await self._store.step_done(job.erasure_id, step)
                if not await self._extend(job):
                    return False  # lost the lease: whoever has it carries on
        except _Settling as settling:
            await self._store.release(job.erasure_id, holder=self._holder, retry_at=settling.until)
            return False
        except (ParleyError, _NotYet) as exc:
            await self._postpone(job, exc, retry_at=_at(self._clock() + RETRY_SECONDS))
            return False
        retry_at: datetime | None = None
        for step in self.steps_of(job):
            if step in done or not _at_peer(step):
                continue
            try:
                await self._step(step, job)
                await self._store.step_done(job.erasure_id, step)
            except _Settling as settling:
                retry_at = min(retry_at or settling.until, settling.until)
            except (ParleyError, _NotYet) as exc:
                # That region's part only: the next region's is tried anyway.
                log.info("erasure_step_postponed", erasure_id=job.erasure_id, error=str(exc))
                self.postponed += 1
                later = _at(self._clock() + RETRY_SECONDS)
                retry_at = min(retry_at or later, later)
            if not await self._extend(job):
                return False
        if retry_at is not None:
            await self._store.release(job.erasure_id, holder=self._holder, retry_at=retry_at)
            return False
        await self._store.finish(job.erasure_id, now=_at(self._clock()))
        self.finished += 1
        log.info("erasure_finished", erasure_id=job.erasure_id)
        return True

    async def _extend(self, job: ErasureJob) -> bool:
        until = _at(self._clock()) + self._policy.lease
        return await self._store.extend(job.erasure_id, holder=self._holder, until=until)

    async def _postpone(self, job: ErasureJob, exc: Exception, *, retry_at: datetime) -> None:
        log.info("erasure_step_postponed", erasure_id=job.erasure_id, error=str(exc))
        self.postponed += 1
        await self._store.release(job.erasure_id, holder=self._holder, retry_at=retry_at)

    async def _step(self, step: str, job: ErasureJob) -> ErasureJob:
        """Do ``step``; the job as it is after it (``account`` may add the
        handle's release at a peer registrar)."""
        if step == DEVICES:
            await self._revoke_devices(job, now=self._clock())
            return job
        device_ids = await self._device_ids(job)
        for eraser in self._erasers:
            if eraser.step == step:
                settled = job.created_at + self._policy.settle
                if _at(self._clock()) < settled:
                    raise _Settling(settled)
                for _ in range(MAX_CALLS_PER_STEP):
                    if await eraser.erase(
                        account_id=job.account_id, device_ids=device_ids, erasure_id=job.erasure_id
                    ):
                        return job
                raise _NotYet(step)
        if step == KEYS:
            for device_id in device_ids:
                await self._keys.delete_device(device_id)
                await self._lows.forget(device_id)
                await self._sender_keys.delete_for_device(device_id)
            await self._sender_keys.delete_from_devices(device_ids)
            await self._identity_changes.forget_account(job.account_id)
        elif step == LIMITS:
            await self._buckets.forget([job.account_id, *device_ids])
        elif step == COLD:
            await self._cold.schedule(
                account_id=job.account_id, erasure_id=job.erasure_id, deadline=job.cold_deadline
            )
        elif step == ACCOUNT:
            return await self._erase_account(job)
        elif step.startswith(HANDLE_AT):
            await self._release_at_registrar(job)
        elif step.startswith(REVOCATIONS_AT):
            peer = step.removeprefix(REVOCATIONS_AT)
            left = await self._revocations.unacknowledged(peer, device_ids)
            if left:
                raise _NotYet(f"{step}: {left} revocations not acknowledged yet")
        return job

    async def _erase_account(self, job: ErasureJob) -> ErasureJob:
        key = await self._accounts.handle_key_of(job.account_id)
        if key is not None:
            # Held before the account goes, so the unique handle index
            # refuses a sign-up until the hold is in place.
            await self._store.hold_handle(key, until=job.handle_release_at)
            registrar = None if self._handles is None else self._handles.remote_registrar(key)
            if registrar is not None:
                # Kept before the account (the only other copy of the
                # handle) goes; released by the handle@ step, with the
                # other regions' parts, so a cut-off registrar holds back
                # only that.
                await self._store.defer_handle_release(
                    job.erasure_id, handle_key=key, registrar=registrar
                )
                job = replace(job, handle_key=key, handle_registrar=registrar)
            elif self._handles is not None:
                await self._handles.release(
                    key, account_id=job.account_id, until=job.handle_release_at
                )
        await self._accounts.delete_devices(job.account_id)
        await self._accounts.delete_account(job.account_id)
        return job

    async def _release_at_registrar(self, job: ErasureJob) -> None:
        if job.handle_key is None or job.handle_registrar is None or self._handles is None:
            return
        await self._handles.release_at(
            job.handle_registrar,
            job.handle_key,
            account_id=job.account_id,
            until=job.handle_release_at,
        )

    async def _device_ids(self, job: ErasureJob) -> list[str]:
        return sorted(set(job.device_ids) | set(await self._accounts.device_ids_of(job.account_id)))

    async def _revoke_devices(self, job: ErasureJob, *, now: float) -> None:
        device_ids = await self._device_ids(job)
        await self._store.add_devices(job.erasure_id, device_ids)
        for device_id in device_ids:
            await self._accounts.revoke_device(device_id, now=_at(now))
            await self._revocations.revoke_device(device_id, now=now)

    async def running(self) -> int:
        """Erasure jobs not finished yet (all processes)."""
        return await self._store.running()

    async def handle_held(self, handle: str, *, now: float) -> bool:
        return await self._store.handle_held(handle_key(handle), now=_at(now))


class _NotYet(Exception):
    """A service's part is not finished after the calls one claim allows."""


class _Settling(Exception):
    """The revocations may not have reached every service yet."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"revocations settle until {until.isoformat()}")
        self.until = until
