"""Push notification settings of svc_message: signed webhook, APNs, FCM."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    field_validator,
)

from parley_core.config._section import Section


class WebhookPushSettings(Section):
    url: str | None = None
    """http(s) URL the webhook provider POSTs notifications to; unset: webhook tokens are accepted
    but their notifications dead-letter."""
    secret: str | None = Field(default=None, min_length=16, repr=False)
    """HMAC-SHA256 key of the webhook signature header; give it through
    PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE, never in the YAML."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Seconds one webhook request may take before the attempt fails."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class ApnsPushSettings(Section):
    endpoint: str = "https://api.push.apple.com"
    """APNs base URL: production; https://api.sandbox.push.apple.com for development builds."""
    team_id: str | None = None
    """Apple developer team id, the issuer of the provider token; APNs push needs team_id, key_id,
    private_key_file and topic together."""
    key_id: str | None = None
    """Id of the APNs signing key (the provider token's kid)."""
    private_key_file: Path | None = None
    """The .p8 APNs signing key from the Apple developer account."""
    topic: str | None = None
    """The app's bundle id, sent as apns-topic."""
    ca_file: Path | None = None
    """CA bundle to trust instead of the system's (tests with a local server)."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """Seconds one APNs request may take before the attempt fails."""


class FcmPushSettings(Section):
    endpoint: str = "https://fcm.googleapis.com"
    """FCM base URL the HTTP v1 send requests go to."""
    service_account_file: Path | None = None
    """The Firebase service account JSON (client_email, private_key, token_uri); setting it turns
    FCM push on."""
    project_id: str | None = None
    """Firebase project id; unset: the service account's project_id."""
    ca_file: Path | None = None
    """CA bundle to trust instead of the system's (tests with a local server)."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """Seconds one FCM request (or token exchange) may take before the attempt fails."""


class PushSettings(Section):
    worker: bool = True
    """Run a push outbox worker in this process; any number of processes may."""
    collapse_seconds: float = Field(default=2.0, ge=0, le=300)
    """Messages for one device within this many seconds become one notification."""
    max_attempts: int = Field(default=8, ge=1, le=100)
    """Delivery attempts before a notification is dead-lettered."""
    # Full jitter: the wait is uniform below the bound, so the retries of many
    # notifications failing together (a provider outage) do not come in waves.
    backoff_base_seconds: float = Field(default=1.0, gt=0, le=600)
    """Bound of the wait after the first failed attempt, in seconds; the bound doubles with each
    further attempt."""
    backoff_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    """Largest bound of the wait between two attempts, in seconds (a provider's Retry-After may
    still ask for longer)."""
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Seconds after which a claimed notification whose worker vanished is retried."""
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    """Seconds between an idle worker's looks for due notifications."""
    concurrency: int = Field(default=16, ge=1, le=1000)
    """Notifications one worker sends at once."""
    retention_seconds: int = Field(default=7 * 86400, ge=60)
    """Seconds delivered and dead-lettered notifications are kept."""
    webhook: WebhookPushSettings = WebhookPushSettings()
    """Push through a signed HTTP webhook (your own push gateway)."""
    apns: ApnsPushSettings = ApnsPushSettings()
    """Push to iOS devices through Apple Push Notification service."""
    fcm: FcmPushSettings = FcmPushSettings()
    """Push to Android devices through Firebase Cloud Messaging."""
