"""The push providers against local servers that check requests the way the
real endpoints document them (tests/pushservers): valid requests are
accepted and answers map to DELIVERED / RETRY / REJECTED (+ token_gone)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa

from parley_core.config import (
    ApnsPushSettings,
    ConfigError,
    FcmPushSettings,
    PushSettings,
    WebhookPushSettings,
)
from svc_message.model import APNS, FCM, WEBHOOK, Notification, PushOutcome
from svc_message.peers.push import Router, build_providers
from svc_message.peers.push.apns import ApnsProvider
from svc_message.peers.push.fcm import FcmProvider
from svc_message.peers.push.webhook import WebhookProvider
from tests.pushservers import ApnsServer, FcmServer, WebhookServer, write_p8_key
from tests.pushservers.base import service_account_json

APNS_TOKEN = "a1" * 32
FCM_TOKEN = "fcm-device-token_" + "x" * 140
DELIVERED, RETRY, REJECTED = PushOutcome.DELIVERED, PushOutcome.RETRY, PushOutcome.REJECTED


def notification(provider: int, token: str, *, locale: str = "en", count: int = 1, messages=None):
    conversation = str(uuid.uuid4())
    return Notification(
        job_id=str(uuid.uuid4()),
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        provider=provider,
        token=token,
        locale=locale,
        messages=messages or ((conversation, 7),),
        sender_account_id=str(uuid.uuid4()),
        message_id=str(uuid.uuid4()),
        count=count,
    )


class Clock:
    """A settable clock for the providers' token lifetimes."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest_asyncio.fixture
async def closing() -> AsyncIterator[list]:
    """Providers made by a test, closed after it."""
    made: list = []
    yield made
    for provider in made:
        await provider.close()


# -- webhook -------------------------------------------------------------------


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    async with WebhookServer.start() as server:
        yield server


def webhook_provider(server: WebhookServer, closing: list, **overrides) -> WebhookProvider:
    clock = overrides.pop("clock", time.time)
    settings = WebhookPushSettings(**{**server.config(), "timeout_seconds": 2.0, **overrides})
    provider = WebhookProvider(settings, clock=clock)
    closing.append(provider)
    return provider


async def test_webhook_delivers_a_signed_request_without_text(webhook, closing):
    provider = webhook_provider(webhook, closing)
    sent = notification(WEBHOOK, "gateway-token", locale="nl-BE", count=2)
    result = await provider.send(sent)
    assert result.outcome == DELIVERED
    [seen] = webhook.delivered
    assert seen.headers["idempotency-key"] == sent.job_id
    assert seen.headers["x-parley-signature"].startswith("v1=")
    body = seen.json
    assert body["recipient"]["token"] == "gateway-token"
    assert body["alert"] == {"body": "2 nieuwe berichten"}
    assert body["message_id"] == sent.message_id
    assert body["conversation_ids"] == [sent.messages[0][0]]
    assert body["count"] == 2
    assert not webhook.refused


@pytest.mark.parametrize(
    ("status", "outcome", "token_gone"),
    [
        (503, RETRY, False),
        (500, RETRY, False),
        (429, RETRY, False),
        (408, RETRY, False),
        (400, REJECTED, False),
        (403, REJECTED, False),
        (410, REJECTED, True),
    ],
)
async def test_webhook_answer_mapping(webhook, closing, status, outcome, token_gone):
    provider = webhook_provider(webhook, closing)
    webhook.script(status, {"error": "scripted"}, headers={"Retry-After": "7"})
    result = await provider.send(notification(WEBHOOK, "t"))
    assert (result.outcome, result.token_gone) == (outcome, token_gone)
    if outcome == RETRY:
        assert result.retry_after_seconds == 7
    # The scripted answer was used once; the next attempt goes through.
    assert (await provider.send(notification(WEBHOOK, "t"))).outcome == DELIVERED


async def test_webhook_gone_token_only_for_that_token(webhook, closing):
    provider = webhook_provider(webhook, closing)
    webhook.gone("old-token")
    assert (await provider.send(notification(WEBHOOK, "old-token"))).token_gone
    assert (await provider.send(notification(WEBHOOK, "new-token"))).outcome == DELIVERED
    assert (await provider.send(notification(WEBHOOK, "old-token"))).token_gone


async def test_webhook_receiver_refuses_a_wrong_secret(webhook, closing):
    provider = webhook_provider(webhook, closing, secret="not-the-shared-secret")
    result = await provider.send(notification(WEBHOOK, "t"))
    assert result.outcome == REJECTED
    assert [r.reason for r in webhook.refused] == ["bad signature"]
    assert not webhook.delivered


async def test_webhook_receiver_refuses_a_stale_timestamp(webhook, closing):
    provider = webhook_provider(webhook, closing, clock=Clock(-301))
    result = await provider.send(notification(WEBHOOK, "t"))
    assert result.outcome == REJECTED
    assert webhook.refused[0].reason.startswith("timestamp outside")


async def test_webhook_timeout_and_unreachable_are_retried(webhook, closing):
    provider = webhook_provider(webhook, closing, timeout_seconds=0.2)
    webhook.delay = 1.0
    result = await provider.send(notification(WEBHOOK, "t"))
    assert result.outcome == RETRY
    assert "Timeout" in result.detail
    async with WebhookServer.start() as gone:
        url = gone.url
    closed = webhook_provider(webhook, closing, url=url)
    result = await closed.send(notification(WEBHOOK, "t"))
    assert result.outcome == RETRY
    assert "ConnectError" in result.detail


async def test_server_wait_for_counts_deliveries_per_token(webhook, closing):
    provider = webhook_provider(webhook, closing)
    webhook.delay = 0.05
    sends = [provider.send(notification(WEBHOOK, t)) for t in ("a", "b", "a")]
    background = asyncio.gather(*sends)
    assert [r.token for r in await webhook.wait_for(2, token="a")] == ["a", "a"]
    await background
    with pytest.raises(TimeoutError, match="1 of 2 delivered"):
        await webhook.wait_for(2, timeout=0.2, token="b")


# -- APNs ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsServer]:
    async with ApnsServer.start(tmp_path / "apns") as server:
        yield server


def apns_provider(server: ApnsServer, closing: list, clock=time.time, **overrides) -> ApnsProvider:
    provider = ApnsProvider(ApnsPushSettings(**{**server.config(), **overrides}), clock=clock)
    closing.append(provider)
    return provider


async def test_apns_delivers_over_http2_with_documented_headers(apns, closing):
    provider = apns_provider(apns, closing)
    sent = notification(APNS, APNS_TOKEN, locale="de-DE")
    conversation = sent.messages[0][0]
    assert (await provider.send(sent)).outcome == DELIVERED
    [seen] = apns.delivered
    assert seen.http_version == "2"
    assert seen.path == f"/3/device/{APNS_TOKEN}"
    assert seen.claims["iss"] == apns.team_id
    headers = seen.headers
    assert jwt.get_unverified_header(headers["authorization"].split()[1])["kid"] == apns.key_id
    assert headers["apns-topic"] == apns.topic
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-id"] == sent.job_id
    assert headers["apns-collapse-id"] == conversation
    assert int(headers["apns-expiration"]) > time.time() + 3600
    aps = seen.json["aps"]
    assert aps["alert"] == {"body": "Neue Nachricht"}
    assert aps["mutable-content"] == 1
    assert aps["thread-id"] == conversation
    assert seen.json["parley"]["sender_account_id"] == sent.sender_account_id


async def test_apns_server_refuses_http1(apns):
    verify = ssl.create_default_context(cafile=apns.ca_file)
    async with httpx.AsyncClient(verify=verify) as client:
        response = await client.post(f"{apns.base_url}/3/device/{APNS_TOKEN}", content=b"{}")
    assert response.status_code == 505
    assert apns.refused[0].reason == "HTTP/1.1"


async def test_apns_one_connection_and_one_token_for_concurrent_sends(apns, closing):
    provider = apns_provider(apns, closing)
    results = await asyncio.gather(
        *(provider.send(notification(APNS, f"{i:02x}" * 32)) for i in range(40))
    )
    assert {r.outcome for r in results} == {DELIVERED}
    assert len({r.headers["authorization"] for r in apns.delivered}) == 1
    assert len(apns.connection_tokens) == 1


async def test_apns_token_is_renewed_after_50_minutes(apns, closing):
    clock = Clock(-55 * 60)
    provider = apns_provider(apns, closing, clock=clock)
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    clock.offset += 49 * 60
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    clock.offset += 2 * 60
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    iats = [r.claims["iat"] for r in apns.delivered]
    assert iats[0] == iats[1] < iats[2]
    assert not apns.refused


async def test_apns_expired_provider_token_is_renewed_then_retried(apns, closing):
    clock = Clock(-45 * 60)
    provider = apns_provider(apns, closing, clock=clock)
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    clock.offset = 0
    apns.fail(403, "ExpiredProviderToken")
    result = await provider.send(notification(APNS, APNS_TOKEN))
    assert result.outcome == RETRY
    assert "ExpiredProviderToken" in result.detail
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    old, new = apns.delivered
    assert new.claims["iat"] - old.claims["iat"] >= 45 * 60 - 5
    assert not apns.refused


async def test_apns_young_token_is_not_renewed_on_refusal(apns, closing):
    # Renewing a token minted moments ago would trip TooManyProviderTokenUpdates.
    provider = apns_provider(apns, closing)
    apns.fail(403, "ExpiredProviderToken")
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == RETRY
    assert (await provider.send(notification(APNS, APNS_TOKEN))).outcome == DELIVERED
    first, second = apns.received
    assert first.headers["authorization"] == second.headers["authorization"]


async def test_apns_server_refuses_a_wrong_signing_key(apns, closing, tmp_path):
    other_key = tmp_path / "other.p8"
    write_p8_key(other_key)
    provider = apns_provider(apns, closing, private_key_file=other_key)
    result = await provider.send(notification(APNS, APNS_TOKEN))
    assert (result.outcome, result.token_gone) == (RETRY, False)
    assert [r.reason for r in apns.refused] == ["InvalidProviderToken"]
    assert not apns.received


async def test_apns_server_refuses_a_wrong_key_id_and_topic(apns, closing):
    wrong_kid = apns_provider(apns, closing, key_id="OTHERKEY99")
    assert (await wrong_kid.send(notification(APNS, APNS_TOKEN))).outcome == RETRY
    wrong_topic = apns_provider(apns, closing, topic="com.example.other")
    result = await wrong_topic.send(notification(APNS, APNS_TOKEN))
    assert (result.outcome, result.token_gone) == (REJECTED, True)
    assert [r.reason for r in apns.refused] == ["InvalidProviderToken", "DeviceTokenNotForTopic"]


@pytest.mark.parametrize(
    ("status", "reason", "outcome", "token_gone"),
    [
        (400, "BadDeviceToken", REJECTED, True),
        (400, "DeviceTokenNotForTopic", REJECTED, True),
        (410, "ExpiredToken", REJECTED, True),
        (400, "BadCollapseId", REJECTED, False),
        (413, "PayloadTooLarge", REJECTED, False),
        (403, "InvalidProviderToken", RETRY, False),
        (429, "TooManyRequests", RETRY, False),
        (429, "TooManyProviderTokenUpdates", RETRY, False),
        (500, "InternalServerError", RETRY, False),
        (503, "ServiceUnavailable", RETRY, False),
    ],
)
async def test_apns_answer_mapping(apns, closing, status, reason, outcome, token_gone):
    provider = apns_provider(apns, closing)
    apns.fail(status, reason, retry_after=11)
    result = await provider.send(notification(APNS, APNS_TOKEN))
    assert (result.outcome, result.token_gone) == (outcome, token_gone)
    assert reason in result.detail
    if outcome == RETRY:
        assert result.retry_after_seconds == 11


async def test_apns_unregistered_token(apns, closing):
    provider = apns_provider(apns, closing)
    apns.unregister(APNS_TOKEN)
    result = await provider.send(notification(APNS, APNS_TOKEN))
    assert (result.outcome, result.token_gone) == (REJECTED, True)
    assert (await provider.send(notification(APNS, "b2" * 32))).outcome == DELIVERED


async def test_apns_rejects_a_non_hex_token_without_sending(apns, closing):
    provider = apns_provider(apns, closing)
    result = await provider.send(notification(APNS, "not/hex?token"))
    assert (result.outcome, result.token_gone) == (REJECTED, True)
    assert not apns.received and not apns.refused


async def test_apns_payload_stays_within_4_kib_for_many_conversations(apns, closing):
    provider = apns_provider(apns, closing)
    messages = tuple((str(uuid.uuid4()), i) for i in range(300))
    sent = notification(APNS, APNS_TOKEN, messages=messages, count=300)
    assert (await provider.send(sent)).outcome == DELIVERED
    [seen] = apns.delivered
    assert len(seen.body) <= 4096
    assert seen.json["parley"]["count"] == 300
    assert seen.json["aps"]["alert"]["body"] == "300 new messages"


async def test_apns_bad_key_file_fails_at_start(apns, tmp_path):
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_text(
        service_account_json(
            project_id="p",
            client_email="e",
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            key_id="k",
            token_uri="u",
        )["private_key"]
    )
    with pytest.raises(ConfigError, match="not an EC P-256 key"):
        ApnsProvider(ApnsPushSettings(**{**apns.config(), "private_key_file": rsa_pem}))
    with pytest.raises(ConfigError, match="cannot load"):
        ApnsProvider(ApnsPushSettings(**{**apns.config(), "private_key_file": tmp_path / "no"}))


# -- FCM -----------------------------------------------------------------------


@pytest_asyncio.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmServer]:
    async with FcmServer.start(tmp_path / "fcm") as server:
        yield server


def fcm_provider(server: FcmServer, closing: list, clock=time.time, **overrides) -> FcmProvider:
    provider = FcmProvider(FcmPushSettings(**{**server.config(), **overrides}), clock=clock)
    closing.append(provider)
    return provider


async def test_fcm_exchanges_an_assertion_and_sends_a_v1_message(fcm, closing):
    provider = fcm_provider(fcm, closing)
    sent = notification(FCM, FCM_TOKEN, locale="it", count=4)
    conversation = sent.messages[0][0]
    assert (await provider.send(sent)).outcome == DELIVERED
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    [token_request] = fcm.token_requests
    claims = token_request.claims
    assert claims["iss"] == fcm.client_email
    assert claims["aud"] == fcm.token_uri
    assert claims["exp"] - claims["iat"] == 3600
    first = fcm.delivered[0]
    assert first.path == f"/v1/projects/{fcm.project_id}/messages:send"
    message = first.json["message"]
    assert message["token"] == FCM_TOKEN
    assert message["notification"] == {"body": "4 nuovi messaggi"}
    assert message["data"]["count"] == "4"
    assert message["data"]["conversation_id"] == conversation
    assert message["android"]["collapse_key"] == conversation
    assert message["apns"]["headers"]["apns-collapse-id"] == conversation
    # One access token serves both sends.
    assert len({r.headers["authorization"] for r in fcm.delivered}) == 1


async def test_fcm_access_token_renewed_before_it_expires(fcm, closing):
    clock = Clock(-3400)
    provider = fcm_provider(fcm, closing, clock=clock)
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    clock.offset += 3200
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    assert len(fcm.token_requests) == 1
    clock.offset += 100
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    assert len(fcm.token_requests) == 2


async def test_fcm_401_drops_the_access_token_and_retries(fcm, closing):
    provider = fcm_provider(fcm, closing)
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    fcm.revoke_access_tokens()
    result = await provider.send(notification(FCM, FCM_TOKEN))
    assert result.outcome == RETRY
    assert "UNAUTHENTICATED" in result.detail
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    assert len(fcm.token_requests) == 2


async def test_fcm_token_endpoint_refuses_a_wrong_key(fcm, closing, tmp_path):
    account = json.loads(fcm.service_account_file.read_text())
    forged = service_account_json(
        project_id=fcm.project_id,
        client_email=fcm.client_email,
        key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        key_id=account["private_key_id"],
        token_uri=fcm.token_uri,
    )
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    provider = fcm_provider(fcm, closing, service_account_file=path)
    result = await provider.send(notification(FCM, FCM_TOKEN))
    assert (result.outcome, result.token_gone) == (RETRY, False)
    assert "invalid_grant" in result.detail
    assert [r.reason for r in fcm.refused] == ["invalid_grant: Invalid JWT Signature."]
    assert not fcm.delivered


async def test_fcm_wrong_project_is_refused(fcm, closing):
    provider = fcm_provider(fcm, closing, project_id="someone-elses")
    result = await provider.send(notification(FCM, FCM_TOKEN))
    assert result.outcome == RETRY
    assert fcm.refused[0].status == 403


async def test_fcm_malformed_token_is_refused_as_invalid(fcm, closing):
    provider = fcm_provider(fcm, closing)
    result = await provider.send(notification(FCM, "too-short"))
    assert (result.outcome, result.token_gone) == (REJECTED, True)
    assert "registration token" in fcm.refused[0].reason


@pytest.mark.parametrize(
    ("code", "error_code", "outcome", "token_gone"),
    [
        (404, "UNREGISTERED", REJECTED, True),
        (403, "SENDER_ID_MISMATCH", REJECTED, True),
        (400, "INVALID_ARGUMENT", REJECTED, False),
        (401, "THIRD_PARTY_AUTH_ERROR", RETRY, False),
        (429, "QUOTA_EXCEEDED", RETRY, False),
        (500, "INTERNAL", RETRY, False),
        (503, "UNAVAILABLE", RETRY, False),
    ],
)
async def test_fcm_answer_mapping(fcm, closing, code, error_code, outcome, token_gone):
    provider = fcm_provider(fcm, closing)
    fcm.fail(code, error_code, retry_after=30)
    result = await provider.send(notification(FCM, FCM_TOKEN))
    assert (result.outcome, result.token_gone) == (outcome, token_gone)
    assert error_code in result.detail
    if outcome == RETRY:
        assert result.retry_after_seconds == 30
    assert (await provider.send(notification(FCM, FCM_TOKEN))).outcome == DELIVERED
    # Only a plain 401 says our access token is bad.
    assert len(fcm.token_requests) == 1


async def test_fcm_unregistered_token(fcm, closing):
    provider = fcm_provider(fcm, closing)
    fcm.unregister(FCM_TOKEN)
    assert (await provider.send(notification(FCM, FCM_TOKEN))).token_gone
    assert (await provider.send(notification(FCM, FCM_TOKEN + "b"))).outcome == DELIVERED


# -- building and routing --------------------------------------------------------


async def test_router_sends_through_each_configured_provider(webhook, apns, fcm):
    settings = PushSettings(webhook=webhook.config(), apns=apns.config(), fcm=fcm.config())
    router = Router(build_providers(settings))
    try:
        assert router.configured == {WEBHOOK, APNS, FCM}
        for provider, token in ((WEBHOOK, "w"), (APNS, APNS_TOKEN), (FCM, FCM_TOKEN)):
            assert (await router.send(notification(provider, token))).outcome == DELIVERED
        assert [len(s.delivered) for s in (webhook, apns, fcm)] == [1, 1, 1]
    finally:
        await router.close()


async def test_router_rejects_unconfigured_providers(webhook):
    router = Router(build_providers(PushSettings(webhook=webhook.config())))
    try:
        assert router.configured == {WEBHOOK}
        result = await router.send(notification(APNS, APNS_TOKEN))
        assert (result.outcome, result.token_gone) == (REJECTED, False)
        assert result.detail == "apns: provider not configured"
    finally:
        await router.close()


def test_nothing_configured_means_no_providers():
    assert build_providers(PushSettings()) == {}


def test_half_configured_providers_fail_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"message\.push\.webhook\.secret"):
        build_providers(PushSettings(webhook={"url": "https://gw.example/push"}))
    with pytest.raises(ConfigError, match=r"apns\.key_id.*apns\.private_key_file"):
        build_providers(PushSettings(apns={"team_id": "T", "topic": "app"}))
    with pytest.raises(ConfigError, match=r"fcm\.service_account_file"):
        build_providers(PushSettings(fcm={"project_id": "p"}))
    (tmp_path / "sa.json").write_text("{}")
    with pytest.raises(ConfigError, match="lacks client_email, private_key"):
        build_providers(PushSettings(fcm={"service_account_file": tmp_path / "sa.json"}))
