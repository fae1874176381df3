"""Uploads: sessions with presigned PUTs, resumption, verified completion.

A session PUTs to its own staging key, so two uploads of one ciphertext never
touch each other's bytes. CompleteUpload verifies what the store holds (size,
then SHA-256: a single PUT's hash was checked by the store against the signed
header, a multipart object is read back and hashed) and only then creates
the media document pointing at that object; when the media exists already
(two uploads raced) the new object is deleted and the caller becomes one
more uploader.

Crash safety: the completion holds the session (a lease) while it works; the
media document is written before the session is marked completed, and a
sweeper removing an expired session keeps any object a media document points
at, so a crash at any step loses nothing the client was told is stored and
leaks nothing past the session's expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from parley_core.errors import Aborted, FailedPrecondition, InvalidArgument, ParleyError, Reason
from parley_core.ids import random_id
from parley_core.limits import Limiter, LimitName, Take
from svc_media.domain.access import AccessCheck
from svc_media.domain.policy import (
    MediaPolicy,
    quarantined,
    quota_exceeded,
    too_many_uploads,
    upload_not_found,
    utc_day,
)
from svc_media.model import (
    ContentClass,
    MediaRecord,
    MediaState,
    MediaStats,
    PartPlan,
    Presigned,
    QuotaUsage,
    StoredPart,
    StoreRefused,
    Tier,
    UploadOutcome,
    UploadSession,
    UploadState,
    media_id_of,
)
from svc_media.ports import MediaDocs, ObjectStore, Quarantine, Uploads, Usage

log = structlog.get_logger(__name__)

# An erased account's sessions are removed this many at a time, at most
# this many times (sessions expire and are capped per account, so far fewer).
ERASE_BATCH, ERASE_ROUNDS = 500, 1000


def object_key(media_id: str, upload_id: str) -> str:
    return f"media/{media_id[:2]}/{media_id}/{upload_id}"


@dataclass(frozen=True, slots=True)
class _Request:
    """What CreateUpload asks for, with the part size it was given."""

    account_id: str
    request_id: str
    size: int
    sha256: bytes
    content_class: ContentClass
    part_size: int
    part_sha256s: tuple[bytes, ...]

    def check_retry(self, previous: UploadSession) -> None:
        """INVALID_ARGUMENT unless ``previous`` was created by this very request."""
        if not previous.same_request(
            size=self.size,
            sha256=self.sha256,
            content_class=self.content_class,
            part_size=self.part_size,
            part_sha256s=self.part_sha256s,
        ):
            raise InvalidArgument.field(
                "request_id", "already used for an upload with other parameters"
            )


class UploadHandler:
    def __init__(
        self,
        *,
        uploads: Uploads,
        media: MediaDocs,
        usage: Usage,
        quarantine: Quarantine,
        objects: ObjectStore,
        access: AccessCheck,
        limits: Limiter,
        policy: MediaPolicy,
        stats: MediaStats,
        region_number: Callable[[], int | None] = lambda: None,
    ) -> None:
        # This region's number (None: a deployment without regions), carried
        # by the media and upload ids it mints so other regions route to it.
        self._region_number = region_number
        self._uploads = uploads
        self._media = media
        self._usage = usage
        self._quarantine = quarantine
        self._objects = objects
        self._access = access
        self._limits = limits
        self._policy = policy
        self._stats = stats

    # -- CreateUpload -------------------------------------------------------------------

    async def create(
        self,
        *,
        account_id: str,
        request_id: str,
        size: int,
        sha256: bytes,
        content_class: ContentClass,
        part_size: int,
        part_sha256s: Sequence[bytes],
        now: float,
    ) -> UploadOutcome:
        policy = self._policy
        policy.check_size(size, content_class)
        chosen_part = policy.part_size_for(size, part_size, len(part_sha256s))
        request = _Request(
            account_id=account_id,
            request_id=request_id,
            size=size,
            sha256=sha256,
            content_class=content_class,
            part_size=chosen_part,
            part_sha256s=tuple(part_sha256s),
        )
        # No read of an earlier session with this request id comes first: the
        # unique (account, request_id) index finds a retry when the session is
        # inserted, and any refusal or dedup answer looks for one before it is
        # given, so a retry always gets its first answer (a database command
        # less on every new upload).
        try:
            outcome = await self._start(request, now=now)
        except ParleyError:
            previous = await self._previous(request)
            if previous is None:
                raise
            return await self._describe(previous, now=now)
        if outcome.stored is not None:
            previous = await self._previous(request)
            if previous is not None:
                return await self._describe(previous, now=now)
        return outcome

    async def _previous(self, request: _Request) -> UploadSession | None:
        """The session an earlier attempt of this request created, if any."""
        previous = await self._uploads.by_request(request.account_id, request.request_id)
        if previous is not None:
            request.check_retry(previous)
        return previous

    async def _start(self, request: _Request, *, now: float) -> UploadOutcome:
        policy = self._policy
        account_id, size = request.account_id, request.size
        await self._limits.take(Take(LimitName.MEDIA_UPLOAD_PER_ACCOUNT, account_id), now=now)
        region_number = self._region_number()
        media_id = media_id_of(request.sha256, region_number)
        # Independent reads side by side (each a database round trip), judged
        # below in the order the checks have always had.
        banned, existing, pending = await asyncio.gather(
            self._quarantine.get(request.sha256),
            self._media.get(media_id),
            self._uploads.pending_count(account_id, now=now),
        )
        if banned is not None:
            raise quarantined()
        if (
            existing is not None
            and existing.state == MediaState.READY
            and await self._access.may_read(account_id, existing)
        ):
            self._stats.already_stored += 1
            return UploadOutcome(stored=existing)
        if pending >= policy.max_pending:
            raise too_many_uploads(policy.max_pending)
        # Before the charge: an upload the store cannot take costs no quota.
        self._objects.ensure_available()
        await self._charge(account_id, size, now=now)
        upload_id = random_id(region_number=region_number)
        key = object_key(media_id, upload_id)
        multipart_id = await self._objects.create_multipart(key) if request.part_size else None
        session = UploadSession(
            upload_id=upload_id,
            account_id=account_id,
            request_id=request.request_id,
            media_id=media_id,
            sha256=request.sha256,
            size=size,
            content_class=request.content_class,
            object_key=key,
            created_at=now,
            expires_at=now + policy.session_seconds,
            state=UploadState.PENDING,
            multipart_id=multipart_id,
            part_size=request.part_size,
            part_sha256s=request.part_sha256s,
        )
        stored = await self._uploads.insert(session)
        if stored.upload_id != upload_id:
            # A retry (or a concurrent one) of a request that has its session:
            # that session stands, and this attempt costs nothing.
            if multipart_id is not None:
                await self._objects.abort_multipart(key, multipart_id)
            await self._usage.refund_upload(account_id, size, day=utc_day(now))
            request.check_retry(stored)
        else:
            self._stats.uploads_started += 1
        return await self._describe(stored, now=now)

    async def _charge(self, account_id: str, size: int, *, now: float) -> None:
        """Charge today's uploads, within the daily and the stored quota."""
        policy = self._policy
        refused = await self._usage.charge_upload(
            account_id,
            size,
            day=utc_day(now),
            daily_limit=policy.daily_upload_bytes,
            stored_limit=policy.stored_bytes,
        )
        if refused is None:
            return
        uploaded, stored = await self._usage.usage(account_id, day=utc_day(now))
        self._refused(refused)
        if refused == "stored_bytes":
            raise quota_exceeded("stored_bytes", limit=policy.stored_bytes, used=stored)
        raise quota_exceeded("daily_upload_bytes", limit=policy.daily_upload_bytes, used=uploaded)

    def _refused(self, quota: str) -> None:
        refusals = self._stats.quota_refusals
        refusals[quota] = refusals.get(quota, 0) + 1

    # -- GetUpload ----------------------------------------------------------------------

    async def get(self, *, account_id: str, upload_id: str, now: float) -> UploadOutcome:
        session = await self._uploads.get(upload_id)
        if session is None or session.account_id != account_id:
            raise upload_not_found()
        if session.state != UploadState.PENDING or session.expires_at <= now:
            raise upload_not_found()
        return await self._describe(session, now=now, look=True)

    async def _describe(
        self, session: UploadSession, *, now: float, look: bool = False
    ) -> UploadOutcome:
        """The session with fresh URLs; with ``look``, multipart parts already
        stored are marked and get none."""
        if session.state != UploadState.PENDING or session.expires_at <= now:
            return UploadOutcome(session=session)
        # URLs never outlive their session.
        ttl = int(min(self._policy.put_url_seconds, max(1.0, session.expires_at - now)))
        if not session.multipart:
            self._objects.ensure_available()
            put = self._objects.presign_put(
                session.object_key,
                size=session.size,
                sha256=session.sha256,
                expires_in=ttl,
                now=now,
            )
            return UploadOutcome(session=session, put=put)
        stored: dict[int, StoredPart] = {}
        if look:
            found = await self._objects.list_parts(session.object_key, str(session.multipart_id))
            stored = {p.number: p for p in found or ()}
        else:
            self._objects.ensure_available()
        parts: list[tuple[PartPlan, Presigned | None]] = []
        for plan in session.parts():
            held = stored.get(plan.number)
            if held is not None and held.size == plan.size:
                parts.append((plan, None))
            else:
                parts.append(
                    (
                        plan,
                        self._objects.presign_part(
                            session.object_key,
                            str(session.multipart_id),
                            plan,
                            expires_in=ttl,
                            now=now,
                        ),
                    )
                )
        return UploadOutcome(session=session, parts=parts)

    # -- CompleteUpload -------------------------------------------------------------------

    async def complete(self, *, account_id: str, upload_id: str, now: float) -> MediaRecord:
        session = await self._uploads.get(upload_id)
        if session is None or session.account_id != account_id:
            raise upload_not_found()
        if session.state == UploadState.COMPLETED:
            return await self._completed(session)
        if session.state != UploadState.PENDING or session.expires_at <= now:
            raise upload_not_found()
        # A read and an update_one rather than one find_one_and_update:
        # SecantusDB answers the pair in under half the time.
        lease = now + self._policy.complete_lease(session.size)
        if not await self._uploads.lease(upload_id, account_id, now=now, until=lease):
            again = await self._uploads.get(upload_id)
            if again is not None and again.state == UploadState.COMPLETED:
                return await self._completed(again)
            if again is None or again.state != UploadState.PENDING or again.expires_at <= now:
                raise upload_not_found()
            raise Aborted("a completion of this upload is in progress; retry in a moment")
        finished = False
        try:
            media = await self._complete_held(session, now=now)
            finished = True
            return media
        finally:
            # A finished session holds no lease; otherwise a retry may go on.
            if not finished:
                await self._uploads.unlease(upload_id)

    async def _completed(self, session: UploadSession) -> MediaRecord:
        media = await self._media.get(session.media_id)
        if media is None or media.state != MediaState.READY:
            raise upload_not_found()
        return media

    async def _complete_held(self, session: UploadSession, *, now: float) -> MediaRecord:
        # Independent reads, side by side: each is a round trip to the database.
        # The stored bytes are read here too (they were never read atomically
        # with the charge): one round trip less after the verification.
        banned, existing, (_, stored) = await asyncio.gather(
            self._quarantine.get(session.sha256),
            self._media.get(session.media_id),
            self._usage.usage(session.account_id, day=utc_day(now)),
        )
        if banned is not None:
            raise quarantined()
        if (
            existing is not None
            and existing.state == MediaState.READY
            and existing.object_key == session.object_key
        ):
            # An earlier attempt stored the media and stopped before marking
            # the session: finish it.
            await self._uploads.finish(session.upload_id, UploadState.COMPLETED, now=now)
            return existing
        await self._verify(session, now=now)
        return await self._publish(session, existing, stored=stored, now=now)

    async def _verify(self, session: UploadSession, *, now: float) -> None:
        objects = self._objects
        objects.ensure_available()
        if session.multipart:
            listed = await objects.list_parts(session.object_key, str(session.multipart_id))
            if listed is not None:
                await self._assemble(session, listed)
        info = await objects.head(session.object_key)
        if info is None:
            if (
                session.multipart
                and await objects.list_parts(session.object_key, str(session.multipart_id)) is None
            ):
                await self._uploads.finish(session.upload_id, UploadState.ABORTED, now=now)
                raise upload_not_found()
            raise FailedPrecondition(
                "nothing was uploaded yet: PUT the object, then complete",
                reason=Reason.UPLOAD_INCOMPLETE,
            )
        if info.size != session.size:
            await self._reject(session, "size", f"the stored object has {info.size} bytes", now)
        if info.sha256 is not None and not session.multipart:
            matches = info.sha256 == session.sha256
        else:
            matches = await self._hash(session.object_key) == session.sha256
        if not matches:
            await self._reject(session, "sha256", "the stored object has another SHA-256", now)

    async def _assemble(self, session: UploadSession, listed: list[StoredPart]) -> None:
        by_number = {p.number: p for p in listed}
        missing = [
            plan.number
            for plan in session.parts()
            if (held := by_number.get(plan.number)) is None or held.size != plan.size
        ]
        if missing:
            shown = ", ".join(str(n) for n in missing[:20])
            raise FailedPrecondition(
                f"parts not uploaded yet: {shown}" + (" ..." if len(missing) > 20 else ""),
                reason=Reason.UPLOAD_INCOMPLETE,
                metadata={"missing_parts": str(len(missing))},
            )
        try:
            await self._objects.complete_multipart(
                session.object_key,
                str(session.multipart_id),
                [(by_number[plan.number], plan.sha256) for plan in session.parts()],
            )
        except StoreRefused as exc:
            raise FailedPrecondition(
                f"the object store refused to assemble the parts ({exc.code}); upload them again",
                reason=Reason.UPLOAD_INCOMPLETE,
            ) from None

    async def _hash(self, key: str) -> bytes:
        hasher = hashlib.sha256()
        async for chunk in self._objects.stream(key):
            hasher.update(chunk)
        return hasher.digest()

    async def _reject(self, session: UploadSession, field: str, why: str, now: float) -> None:
        self._stats.verification_failures += 1
        await self._objects.delete(session.object_key)
        await self._uploads.finish(session.upload_id, UploadState.ABORTED, now=now)
        raise InvalidArgument.field(field, f"does not match the upload: {why}; upload again")

    async def _publish(
        self, session: UploadSession, existing: MediaRecord | None, *, stored: int, now: float
    ) -> MediaRecord:
        """Write the media document for the verified object; ``existing`` is the
        media and ``stored`` the account's stored bytes as read before the
        verification (a later race is found by create)."""
        policy = self._policy
        account = session.account_id
        new_uploader = existing is None or account not in existing.uploaders
        if new_uploader and stored + session.size > policy.stored_bytes:
            # The session stays pending: free space and complete again.
            self._refused("stored_bytes")
            raise quota_exceeded("stored_bytes", limit=policy.stored_bytes, used=stored)
        record = MediaRecord(
            media_id=session.media_id,
            sha256=session.sha256,
            size=session.size,
            content_class=session.content_class,
            object_key=session.object_key,
            # BSON dates hold milliseconds: answer with what a later read returns.
            created_at=int(now * 1000) / 1000,
            state=MediaState.READY,
            uploaders=(account,),
            touch=0,
            # Never referenced yet: first checked when the session would expire.
            next_check_at=session.expires_at,
            check_backoff_seconds=policy.grace_seconds,
            tier=Tier.STANDARD,
        )
        created = await self._media.create(record)
        if created is None:
            return await self._join(session, now=now)
        # Both only after the document: a crash before either leaves a pending
        # session whose retry finds its own media and finishes it.
        await asyncio.gather(
            self._usage.add_stored(account, session.size),
            self._uploads.finish(session.upload_id, UploadState.COMPLETED, now=now),
        )
        self._stats.uploads_completed += 1
        self._stats.bytes_uploaded += session.size
        return created

    async def _join(self, session: UploadSession, *, now: float) -> MediaRecord:
        """The media exists: keep its object, drop ours, add the caller."""
        try:
            added = await self._media.add_uploader(
                session.media_id, session.account_id, check_at=session.expires_at
            )
        except LookupError:
            raise Aborted(
                "this media is being removed right now; complete the upload again in a moment"
            ) from None
        await self._objects.delete(session.object_key)
        if added:
            await self._usage.add_stored(session.account_id, session.size)
        await self._uploads.finish(session.upload_id, UploadState.COMPLETED, now=now)
        self._stats.dedup_completions += 1
        self._stats.bytes_uploaded += session.size
        media = await self._media.get(session.media_id)
        if media is None:
            raise Aborted("this media is being removed right now; upload it again")
        return media

    # -- AbortUpload, GetQuota ------------------------------------------------------------

    async def abort(self, *, account_id: str, upload_id: str, now: float) -> None:
        session = await self._uploads.get(upload_id)
        if session is None or session.account_id != account_id:
            raise upload_not_found()
        if session.state == UploadState.COMPLETED:
            # Not pending any more: the media goes once nothing references it.
            raise upload_not_found()
        if session.state != UploadState.PENDING:
            return
        if not await self._uploads.lease(
            upload_id, account_id, now=now, until=now + self._policy.complete_lease(0)
        ):
            if session.expires_at <= now:
                return  # the sweeper removes it
            raise Aborted("a completion of this upload is in progress; retry in a moment")
        try:
            await self._discard(session)
            await self._uploads.finish(upload_id, UploadState.ABORTED, now=now)
        finally:
            await self._uploads.unlease(upload_id)

    async def _discard(self, session: UploadSession) -> None:
        """Remove what the session stored, unless a media document uses it."""
        if await self._media.by_object(session.media_id, session.object_key) is not None:
            return
        if session.multipart_id is not None:
            await self._objects.abort_multipart(session.object_key, session.multipart_id)
        await self._objects.delete(session.object_key)

    async def expire(self, *, now: float, limit: int) -> int:
        """Remove the stored parts of expired sessions; safe in several processes
        (removal is idempotent, one of them marks each session)."""
        expired = await self._uploads.expired(now=now, limit=limit)
        done = 0
        for session in expired:
            await self._discard(session)
            if await self._uploads.finish(session.upload_id, UploadState.EXPIRED, now=now):
                done += 1
        self._stats.sessions_expired += done
        return done

    async def erase_uploader(self, *, account_id: str, now: float) -> None:
        """An account erasure: its sessions (and what pending ones stored),
        its usage, and its place among uploaders. Idempotent."""
        for _ in range(ERASE_ROUNDS):
            sessions = await self._uploads.of_account(account_id, limit=ERASE_BATCH)
            if not sessions:
                break
            for session in sessions:
                await self._discard(session)
            await self._uploads.delete([s.upload_id for s in sessions])
        grace = self._policy.grace_seconds
        await self._media.forget_uploader(account_id, check_at=now + grace, backoff=grace)
        await self._usage.forget(account_id)

    async def quota(self, *, account_id: str, now: float) -> QuotaUsage:
        uploaded, stored = await self._usage.usage(account_id, day=utc_day(now))
        return QuotaUsage(
            uploaded_today=uploaded,
            daily_limit=self._policy.daily_upload_bytes,
            stored=stored,
            stored_limit=self._policy.stored_bytes,
        )
