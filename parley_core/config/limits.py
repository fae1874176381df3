"""Rate limits: one token bucket per limit name."""

from __future__ import annotations

import ipaddress

from pydantic import (
    Field,
    field_validator,
)

from parley_core.config._section import Section


class LimitRate(Section):
    """A token bucket: ``burst`` requests at once, refilled at ``per_minute``."""

    burst: int = Field(ge=1, le=1_000_000_000)
    """Requests allowed at once: the bucket's size, full when unused."""
    per_minute: float = Field(gt=0, le=1_000_000_000)
    """Tokens the bucket regains a minute (a steady rate of that many requests a minute)."""


class LimitsSettings(Section):
    """Abuse limits of every service: token buckets shared through Redis (one script call per
    request), per this process while Redis does not answer. A refusal is RESOURCE_EXHAUSTED with
    reason RATE_LIMITED, a RetryInfo and the limit's name. The table of limits, what each keys on
    and why, is in docs/ARCHITECTURE.md (Abuse limits)."""

    enabled: bool = True
    """Apply the limits below; off, no request is refused and Redis is not asked."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDR blocks (10.0.0.0/8, fd00::/8) of the load balancers in front of the
    services: only a request whose peer is one of them has its client address taken from
    x-forwarded-for (the rightmost hop not in this list). Empty: the peer is the client."""
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    """Seconds a take may wait for Redis before this process uses its own buckets instead."""
    fallback_seconds: float = Field(default=2.0, gt=0, le=300)
    """Seconds this process keeps to its own buckets after Redis failed before asking it again."""
    refusal_hold_seconds: float = Field(default=0.25, ge=0, le=5)
    """Seconds a refused call is held before its answer (at most its RetryInfo delay, which is
    shortened by as much, so a client that waits as told loses nothing): a client that ignores
    RetryInfo and resends as soon as an answer comes back is slowed to a few calls a second per
    call it keeps open, instead of taking a core in refusals. 0 answers at once."""
    signup_per_address: LimitRate = LimitRate(burst=20, per_minute=1)
    """SignUp per client address (IPv6: per /64)."""
    signup_overall: LimitRate = LimitRate(burst=1000, per_minute=600)
    """SignUp over the whole region, one bucket."""
    refresh_per_address: LimitRate = LimitRate(burst=600, per_minute=600)
    """RefreshToken per client address (IPv6: per /64)."""
    refresh_per_device: LimitRate = LimitRate(burst=10, per_minute=2)
    """RefreshToken per device named by the refresh token."""
    device_register_per_account: LimitRate = LimitRate(burst=10, per_minute=0.2)
    """RegisterDevice per account."""
    key_upload_per_device: LimitRate = LimitRate(burst=30, per_minute=10)
    """PublishKeys and UploadPreKeys per device."""
    sender_keys_per_device: LimitRate = LimitRate(burst=300, per_minute=60)
    """SendSenderKeys per device."""
    bundle_fetch_per_target: LimitRate = LimitRate(burst=20, per_minute=20)
    """GetPreKeyBundles per (requester, target account): draining one user's one-time prekeys is
    the attack."""
    bundle_fetch_per_requester: LimitRate = LimitRate(burst=1100, per_minute=300)
    """GetPreKeyBundles per requester over all targets; large enough to start sessions with every
    member of a new 1,024-member group at once."""
    send_per_device: LimitRate = LimitRate(burst=60, per_minute=120)
    """SendMessage per device."""
    send_per_account: LimitRate = LimitRate(burst=120, per_minute=240)
    """SendMessage per account, all its devices together."""
    send_per_conversation: LimitRate = LimitRate(burst=200, per_minute=600)
    """SendMessage per group or channel, all senders together (direct conversations have only the
    per-account limits)."""
    edit_per_account: LimitRate = LimitRate(burst=30, per_minute=30)
    """EditMessage per account."""
    delete_per_account: LimitRate = LimitRate(burst=100, per_minute=60)
    """DeleteMessage (for me and for everyone) per account."""
    react_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """ReactToMessage per account."""
    direct_create_per_account: LimitRate = LimitRate(burst=50, per_minute=10)
    """CreateDirectConversation per account."""
    group_create_per_account: LimitRate = LimitRate(burst=10, per_minute=1)
    """CreateGroup and CreateChannel per account."""
    add_members_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """AddMembers calls per account."""
    group_admin_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """UpdateConversationInfo, SetServerSearch, RemoveMember and SetMemberRole per account."""
    channel_subscribe_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """SubscribeChannel per account."""
    push_token_per_device: LimitRate = LimitRate(burst=10, per_minute=2)
    """RegisterPushToken and RemovePushToken per device."""
    contact_add_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """AddContacts calls (up to 256 accounts each) per account."""
    presence_subscribe_per_account: LimitRate = LimitRate(burst=30, per_minute=30)
    """SubscribePresence streams opened per account."""
    media_upload_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """CreateUpload per account."""
    media_download_per_account: LimitRate = LimitRate(burst=600, per_minute=600)
    """GetDownload per account."""
    search_index_per_account: LimitRate = LimitRate(burst=120, per_minute=240)
    """IndexMessage and RemoveMessage per account (about one per message sent or edited)."""
    search_query_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """Search per account (each page is one call)."""
    media_restore_per_account: LimitRate = LimitRate(burst=10, per_minute=2)
    """RestoreMedia per account (each may start a paid retrieval from the archive)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR block") from None
        return value
