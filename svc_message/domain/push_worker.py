"""The outbox worker: delivers due notifications through the providers.

Every svc_message process may run one (``message.push.worker``); they share
the outbox safely:

- Jobs are claimed atomically (pending and due, or sending with an expired
  lease -> sending, a lease, attempts + 1, a claim id; see
  ``storage.push``), up to ``concurrency`` in flight, so on the happy path no
  two workers send the same job.
- A worker that dies mid-send leaves its job leased; once the lease runs out
  another worker takes it again. Delivery is therefore at least once, and the
  job id travels as the provider's idempotency key so the receiver can drop
  the duplicate.
- Results are written only while the worker still holds the job (its claim
  id and attempt number in the filter): a worker that overran its lease cannot
  overwrite what the next one decided.
- Idle workers poll with a read (is anything due?) and write only to claim,
  so an idle cluster writes nothing.

Before sending, a job is dropped when its device has meanwhile opened a live
stream (it got the messages there), lost its token, or was revoked, or when
the account has read all of its messages on another device (one read of
watermarks per batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from parley_core.ids import new_id
from svc_message.domain.push_planner import live_devices
from svc_message.domain.push_policy import Next, Suppressed, decide, parse_key, read_already
from svc_message.model import Notification, PushOutcome, PushResult, PushToken
from svc_message.model.push import OutboxJob
from svc_message.ports import PushProvider, ReadMarks, StreamingDevices
from svc_message.storage.push import PushOutbox, PushTokenStore

log = structlog.get_logger(__name__)

# The outbox depth gauge is refreshed this often (one count query).
DEPTH_SAMPLE_SECONDS = 5.0
# After a database error the worker waits this long before polling again.
ERROR_PAUSE_SECONDS = 1.0
# A send may use this share of the lease; past it the job counts as failed,
# before another worker could take it while this one still waits.
SEND_SHARE_OF_LEASE = 0.8


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


class PushWorker:
    def __init__(
        self,
        outbox: PushOutbox,
        tokens: PushTokenStore,
        liveness: StreamingDevices,
        provider: PushProvider,
        read_marks: ReadMarks,
        *,
        is_revoked: Callable[[str], bool],
        max_attempts: int,
        backoff_base_seconds: float,
        backoff_max_seconds: float,
        lease_seconds: float,
        poll_seconds: float,
        concurrency: int,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._tokens = tokens
        self._liveness = liveness
        self._provider = provider
        self._read_marks = read_marks
        self._is_revoked = is_revoked
        self._max_attempts = max_attempts
        self._base = backoff_base_seconds
        self._cap = backoff_max_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self._send_timeout = lease_seconds * SEND_SHARE_OF_LEASE
        self._poll = poll_seconds
        self._concurrency = concurrency
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self.worker_id = new_id()
        self._busy = 0
        self._wake = asyncio.Event()
        self._hint: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Counters for push_metrics.
        self.sent = 0
        self.retried = 0
        self.dead = 0
        self.claimed = 0
        self.tokens_forgotten = 0
        self.suppressed: Counter[str] = Counter()
        self.depth: int | None = None

    def due_at(self, when: float) -> None:
        """A job was just enqueued due at ``when``: look then, not at the next poll."""
        if self._hint is None or when < self._hint:
            self._hint = when
        self._wake.set()

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.sample_depth_forever())
            tasks.create_task(self._claim_forever())

    async def sample_depth_forever(self) -> None:
        while True:
            try:
                self.depth = await self._outbox.pending_count()
            except Exception as exc:
                log.warning("push_depth_sample_failed", error=str(exc))
            await asyncio.sleep(DEPTH_SAMPLE_SECONDS)

    async def _claim_forever(self) -> None:
        while not self._stopping:
            # Cleared before claiming: a slot freed or a job enqueued while
            # claiming must cut the next sleep short.
            self._wake.clear()
            try:
                claimed = await self.claim_some()
            except Exception as exc:
                log.warning("push_claim_failed", error=str(exc))
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if claimed and not self._stopping:
                self._start(claimed)
            if self._busy >= self._concurrency or not claimed:
                await self._sleep()

    async def _sleep(self) -> None:
        """Until a slot frees, a hinted job is due, or the poll interval passes."""
        timeout = self._poll
        if self._hint is not None:
            timeout = max(0.0, min(timeout, self._hint - self._clock()))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        if self._hint is not None and self._hint <= self._clock():
            self._hint = None

    async def claim_some(self) -> list[OutboxJob]:
        """Claim due jobs up to the free slots (reads only when none is due)."""
        free = self._concurrency - self._busy
        if free <= 0:
            return []
        claimed = await self._outbox.claim(
            now=_at(self._clock()), lease=self._lease, worker_id=self.worker_id, limit=free
        )
        self.claimed += len(claimed)
        return claimed

    def _start(self, jobs: list[OutboxJob]) -> None:
        self._busy += len(jobs)
        task = asyncio.create_task(self._work(jobs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, jobs: list[OutboxJob]) -> None:
        try:
            await self.deliver(jobs)
        except Exception:
            # The jobs stay leased: another attempt follows when the lease ends.
            log.exception("push_batch_failed", jobs=len(jobs))
        finally:
            self._busy -= len(jobs)
            self._wake.set()

    async def drain(self) -> None:
        """Stop claiming and wait for sends in flight (shutdown); unfinished
        ones are retried after their lease by whoever runs next."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._send_timeout)

    # -- one batch of claimed jobs -----------------------------------------------------

    async def _read_seqs(self, jobs: Sequence[OutboxJob]) -> dict[str, dict[str, int]]:
        """Per account, its read watermark in each conversation of its jobs."""
        members = {(parse_key(key)[0], job.account_id) for job in jobs for key in job.keys}
        read: dict[str, dict[str, int]] = {}
        for marks in await self._read_marks.watermarks_of(members):
            read.setdefault(marks.account_id, {})[marks.conversation_id] = marks.read_seq
        return read

    async def deliver(self, jobs: Sequence[OutboxJob]) -> None:
        """Send a claimed batch and record the outcomes, a write per outcome
        rather than per job (retries excepted: each has its own time). If a
        write fails the jobs stay leased and are tried again after the lease."""
        tokens = await self._tokens.of_devices(j.device_id for j in jobs)
        streaming = await live_devices(
            self._liveness, {j.account_id for j in jobs}, now=self._clock()
        )
        read = await self._read_seqs(jobs)
        drops: dict[str, list[OutboxJob]] = {}
        sends: list[tuple[OutboxJob, PushToken]] = []
        for job in jobs:
            token = tokens.get(job.device_id)
            if self._is_revoked(job.device_id):
                if token is not None:
                    await self._forget_token(job.device_id)
                drops.setdefault(Suppressed.REVOKED, []).append(job)
            elif token is None:
                drops.setdefault(Suppressed.NO_TOKEN, []).append(job)
            elif job.device_id in streaming.get(job.account_id, ()):
                drops.setdefault(Suppressed.STREAMING, []).append(job)
            elif read_already(job.keys, read.get(job.account_id, {})):
                drops.setdefault(Suppressed.READ, []).append(job)
            else:
                sends.append((job, token))
        for reason, dropped in drops.items():
            self.suppressed[reason] += len(dropped)
            await self._outbox.dropped(dropped, now=_at(self._clock()), reason=reason)
        results = await asyncio.gather(*(self._send(job, token) for job, token in sends))
        now = self._clock()
        delivered: list[OutboxJob] = []
        dead: dict[str, list[OutboxJob]] = {}
        for (job, _token), result in zip(sends, results, strict=True):
            decision = decide(
                result,
                job.attempts,
                max_attempts=self._max_attempts,
                base=self._base,
                cap=self._cap,
                rng=self._rng,
            )
            if decision.forget_token:
                await self._forget_token(job.device_id)
            if decision.next == Next.DELIVERED:
                delivered.append(job)
            elif decision.next == Next.RETRY:
                self.retried += 1
                await self._outbox.retry(job, due_at=_at(now + decision.delay), error=result.detail)
                self.due_at(now + decision.delay)
            else:
                log.info(
                    "push_dead_lettered", job=job.job_id, attempts=job.attempts, error=result.detail
                )
                dead.setdefault(result.detail or result.outcome, []).append(job)
        self.sent += len(delivered)
        await self._outbox.delivered(delivered, now=_at(now))
        for error, failed in dead.items():
            self.dead += len(failed)
            await self._outbox.dead(failed, now=_at(now), error=error)

    async def _forget_token(self, device_id: str) -> None:
        if await self._tokens.remove(device_id):
            self.tokens_forgotten += 1

    async def _send(self, job: OutboxJob, token: PushToken) -> PushResult:
        notification = Notification(
            job_id=job.job_id,
            account_id=job.account_id,
            device_id=job.device_id,
            provider=token.provider,
            token=token.token,
            locale=token.locale,
            messages=tuple(parse_key(k) for k in job.keys),
            sender_account_id=job.sender_account_id,
            message_id=job.message_id,
            count=len(job.keys),
            attempt=job.attempts,
        )
        try:
            return await asyncio.wait_for(
                self._provider.send(notification), timeout=self._send_timeout
            )
        except TimeoutError:
            return PushResult(PushOutcome.RETRY, detail="no answer within the lease")
        except Exception as exc:
            # Providers report failures as results; this is a bug, retried.
            log.exception("push_provider_crashed", job=job.job_id)
            return PushResult(PushOutcome.RETRY, detail=f"provider error: {type(exc).__name__}")
