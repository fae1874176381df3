"""Who is notified of which message, and when a failed push is tried again.

Pure rules: the caller reads the state (tokens, live streams, mutes, quiet
hours) and passes it in with the time; nothing here does I/O.

- Only new messages are pushed: not system messages, not edits, reactions or
  deletes, and only in direct conversations and groups. Channels are never
  pushed: a post would fan out to every subscriber (unbounded), which is what
  fan-out on read avoids; channel readers see posts when they open the app.
- A device is skipped while it holds a live delivery stream (it gets the
  message there), when the recipient muted the conversation, and inside the
  recipient's do-not-disturb window. Both are judged at the message's arrival
  time, so a replay after a crash decides as the first attempt would have.
- Do-not-disturb is a daily window of local wall-clock minutes in the user's
  time zone: ``start <= minute < end``; when ``end < start`` it runs past
  midnight (22:00-07:00). ``start == end`` means all day: a zero-length window
  would be the same as disabled, and "quiet until I turn it off" is what users
  mean by switching do-not-disturb on without hours.
- Collapse: each device has at most one pending notification. Messages for it
  join that one (by their (conversation, seq) key, so counting them twice is
  impossible), and it is due ``collapse_seconds`` after its first message.
- Retries: full-jitter exponential backoff, ``uniform(0, min(cap, base *
  2**(attempt-1)))``, never sooner than a provider's Retry-After. A rejection,
  or a failure at the last attempt, dead-letters the notification.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from svc_message.model import DoNotDisturb, PushOutcome, PushResult

MINUTES_PER_DAY = 24 * 60
# A message this old when planned is not pushed any more: it only happens when
# a crashed process is replayed long after (every process was down), and by
# then a notification is noise.
MAX_PUSH_AGE = timedelta(hours=1)
# However long a provider asks us to wait, a day is the most we wait.
MAX_RETRY_AFTER_SECONDS = 86_400.0
# IANA names: "UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5".
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")
MAX_ZONE_NAME = 64


class Suppressed:
    """Why a device was not (or no longer) notified: the metric's label."""

    MUTED = "muted"
    DND = "dnd"
    STREAMING = "streaming"
    STALE = "stale"
    # Worker side: the device lost its token or was revoked before the send,
    # or the account read every message of it on another device meanwhile.
    NO_TOKEN = "no_token"
    REVOKED = "revoked"
    READ = "read"


def read_already(keys: Iterable[str], read_seqs: Mapping[str, int]) -> bool:
    """Whether the account has read every message a notification stands for
    (``read_seqs``: its read watermark per conversation), so it would only
    announce what the user has seen."""
    return all(
        seq <= read_seqs.get(conversation_id, 0) for conversation_id, seq in map(parse_key, keys)
    )


def message_key(conversation_id: str, seq: int) -> str:
    """The identity of a message inside a notification (collapse, dedupe)."""
    return f"{conversation_id}:{seq}"


def parse_key(key: str) -> tuple[str, int]:
    conversation_id, _, seq = key.rpartition(":")
    return conversation_id, int(seq)


def time_zone(name: str) -> tzinfo | None:
    """The zone of an IANA name ("" is UTC); None if there is no such zone."""
    if not name:
        return UTC
    if len(name) > MAX_ZONE_NAME or not _ZONE_NAME.match(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def is_muted(muted_until: datetime | None, at: datetime) -> bool:
    return muted_until is not None and muted_until > at


def in_quiet_hours(dnd: DoNotDisturb | None, at: datetime) -> bool:
    """Whether ``at`` falls in the do-not-disturb window (see the module doc).
    A zone that no longer exists (tzdata changed) counts as UTC."""
    if dnd is None or not dnd.enabled:
        return False
    start, end = dnd.start_minute, dnd.end_minute
    if start == end:
        return True
    local = at.astimezone(time_zone(dnd.time_zone) or UTC)
    minute = local.hour * 60 + local.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


@dataclass(frozen=True, slots=True)
class PushMessage:
    """A committed message and who may be told about it."""

    conversation_id: str
    seq: int
    message_id: str
    sender_account_id: str
    created_at: datetime
    recipients: tuple[str, ...]

    @property
    def key(self) -> str:
        return message_key(self.conversation_id, self.seq)

    @property
    def newest(self) -> str:
        """Orders messages by time across conversations (ids are UUIDv7), and
        carries the sender: the outbox keeps the greatest with ``$max``."""
        return f"{self.message_id}|{self.sender_account_id}"


@dataclass(frozen=True, slots=True)
class JobPlan:
    """What to add to one device's pending notification."""

    account_id: str
    device_id: str
    # Message keys, oldest first.
    keys: tuple[str, ...]
    newest: str
    # When the notification is due if this creates it.
    due_at: datetime


@dataclass(slots=True)
class Plan:
    jobs: list[JobPlan]
    suppressed: Counter[str]


def plan(
    messages: Sequence[PushMessage],
    *,
    devices: Mapping[str, Sequence[str]],
    streaming: Mapping[str, set[str]],
    muted_until: Mapping[tuple[str, str], datetime | None],
    quiet: Mapping[str, DoNotDisturb],
    now: datetime,
    collapse_seconds: float,
) -> Plan:
    """Per device, the messages to notify it of.

    ``devices``: per recipient account, its devices with a push token;
    ``streaming``: per account, devices with a live stream; ``muted_until``:
    per (conversation, account); ``quiet``: per account."""
    suppressed: Counter[str] = Counter()
    per_device: dict[str, tuple[str, list[PushMessage]]] = {}
    for message in sorted(messages, key=lambda m: (m.created_at, m.message_id)):
        if now - message.created_at > MAX_PUSH_AGE:
            suppressed[Suppressed.STALE] += 1
            continue
        for account_id in message.recipients:
            targets = devices.get(account_id, ())
            if not targets:
                continue
            if is_muted(muted_until.get((message.conversation_id, account_id)), message.created_at):
                suppressed[Suppressed.MUTED] += len(targets)
                continue
            if in_quiet_hours(quiet.get(account_id), message.created_at):
                suppressed[Suppressed.DND] += len(targets)
                continue
            live = streaming.get(account_id, set())
            for device_id in targets:
                if device_id in live:
                    suppressed[Suppressed.STREAMING] += 1
                    continue
                per_device.setdefault(device_id, (account_id, []))[1].append(message)
    jobs = []
    for device_id, (account_id, mine) in per_device.items():
        keys = tuple(dict.fromkeys(m.key for m in mine))
        jobs.append(
            JobPlan(
                account_id=account_id,
                device_id=device_id,
                keys=keys,
                newest=max(m.newest for m in mine),
                due_at=mine[0].created_at + timedelta(seconds=collapse_seconds),
            )
        )
    return Plan(jobs=jobs, suppressed=suppressed)


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """How long to wait after failed attempt number ``attempt`` (from 1).

    Full jitter spreads the retries of many notifications failing together
    (a provider outage) instead of sending them back in waves."""
    ceiling = min(cap, base * 2 ** min(max(attempt - 1, 0), 62))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


class Next:
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    next: str
    # Seconds until the retry (RETRY only).
    delay: float = 0.0
    # The provider says the token no longer exists: delete it.
    forget_token: bool = False


def decide(
    result: PushResult,
    attempt: int,
    *,
    max_attempts: int,
    base: float,
    cap: float,
    rng: random.Random,
) -> Decision:
    """What happens to a notification after attempt ``attempt`` got ``result``."""
    if result.token_gone:
        return Decision(Next.DEAD, forget_token=True)
    if result.outcome == PushOutcome.DELIVERED:
        return Decision(Next.DELIVERED)
    if result.outcome == PushOutcome.REJECTED or attempt >= max_attempts:
        return Decision(Next.DEAD)
    return Decision(
        Next.RETRY,
        delay=backoff_seconds(
            attempt, base=base, cap=cap, rng=rng, retry_after=result.retry_after_seconds
        ),
    )
