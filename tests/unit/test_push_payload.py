"""Push payloads: what a push says (ids, a generic localized line, never
text) and the providers' pure encodings of it."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from svc_message.model import APNS, Notification
from svc_message.peers.push.apns import MAX_PAYLOAD_BYTES, apns_body, apns_id
from svc_message.peers.push.common import MAX_RETRY_AFTER_SECONDS, retry_after
from svc_message.peers.push.fcm import fcm_message
from svc_message.peers.push.payload import (
    MAX_CONVERSATION_IDS,
    alert_text,
    build_payload,
    language_of,
)
from svc_message.peers.push.webhook import sign, webhook_body

C1, C2, C3 = (str(uuid.uuid4()) for _ in range(3))


def notification(messages=((C1, 4),), count=1, locale="en-US", **kw) -> Notification:
    fields = dict(
        job_id=str(uuid.uuid4()),
        account_id="acct-recipient",
        device_id="dev-1",
        provider=APNS,
        token="ab" * 32,
        locale=locale,
        messages=messages,
        sender_account_id="acct-sender",
        message_id="msg-newest",
        count=count,
    )
    fields.update(kw)
    return Notification(**fields)


@pytest.mark.parametrize(
    ("locale", "language"),
    [("pt-BR", "pt"), ("de_AT.UTF-8", "de"), ("FR", "fr"), ("", ""), ("en", "en")],
)
def test_language_of_locales(locale, language):
    assert language_of(locale) == language


@pytest.mark.parametrize(
    ("locale", "count", "text"),
    [
        ("en-US", 1, "New message"),
        ("en-US", 3, "3 new messages"),
        ("de-AT", 1, "Neue Nachricht"),
        ("de", 12, "12 neue Nachrichten"),
        ("pt_BR", 2, "2 novas mensagens"),
        ("ja-JP", 5, "新着メッセージ 5 件"),
        # Not in the table (Russian has more than one/other): English.
        ("ru-RU", 2, "2 new messages"),
        ("", 1, "New message"),
    ],
)
def test_alert_text_localized_with_english_fallback(locale, count, text):
    assert alert_text(locale, count) == text


def test_payload_orders_conversations_newest_first_without_duplicates():
    payload = build_payload(
        notification(messages=((C1, 1), (C2, 7), (C1, 2), (C3, 9), (C2, 8)), count=5)
    )
    assert payload.conversation_ids == (C2, C3, C1)
    assert payload.conversation_id == C2
    assert payload.seq == 8
    assert payload.count == 5
    assert payload.alert == "5 new messages"


def test_payload_caps_conversation_ids_but_keeps_the_count():
    messages = tuple((str(uuid.uuid4()), 1) for _ in range(MAX_CONVERSATION_IDS + 15))
    payload = build_payload(notification(messages=messages, count=len(messages)))
    assert len(payload.conversation_ids) == MAX_CONVERSATION_IDS
    assert payload.conversation_id == messages[-1][0]
    assert payload.count == len(messages)


def test_payload_carries_ids_only_and_data_is_all_strings():
    payload = build_payload(notification())
    assert set(payload.fields()) == {
        "type",
        "job_id",
        "conversation_id",
        "conversation_ids",
        "message_id",
        "seq",
        "sender_account_id",
        "count",
    }
    data = payload.data()
    assert all(isinstance(v, str) for v in data.values())
    assert data["type"] == "message"
    assert data["count"] == "1"
    assert data["seq"] == "4"
    assert data["sender_account_id"] == "acct-sender"


def test_apns_body_shape():
    body = json.loads(apns_body(build_payload(notification(locale="fr", count=2))))
    assert body["aps"] == {
        "alert": {"body": "2 nouveaux messages"},
        "sound": "default",
        "mutable-content": 1,
        "thread-id": C1,
    }
    assert body["parley"]["message_id"] == "msg-newest"


def test_apns_body_shrinks_ids_to_fit_4_kib():
    payload = build_payload(notification(count=3))
    # Ids far longer than Parley's UUIDs force the shrinking path.
    long_ids = tuple("x" * 400 + str(i) for i in range(MAX_CONVERSATION_IDS))
    big = dataclasses.replace(payload, conversation_ids=long_ids)
    encoded = apns_body(big)
    assert len(encoded) <= MAX_PAYLOAD_BYTES
    kept = json.loads(encoded)["parley"]["conversation_ids"]
    assert 1 <= len(kept) < len(long_ids)
    assert kept[0] == long_ids[0]


def test_apns_id_is_the_job_uuid_or_a_stable_derived_one():
    job = str(uuid.uuid4())
    assert apns_id(job) == job
    derived = apns_id("job-42")
    assert derived == apns_id("job-42") != apns_id("job-43")
    assert str(uuid.UUID(derived)) == derived


def test_fcm_message_shape():
    message = fcm_message(notification(token="fcm-token", locale="es"))["message"]
    assert message["token"] == "fcm-token"
    assert message["notification"] == {"body": "Nuevo mensaje"}
    assert all(isinstance(v, str) for v in message["data"].values())
    assert message["android"]["collapse_key"] == C1
    assert message["android"]["priority"] == "HIGH"
    assert message["apns"]["headers"]["apns-collapse-id"] == C1


def test_webhook_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"type":"message"}'
    expected = hmac.new(b"s" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s" * 16, 1700000000, body) == f"v1={expected}"
    assert sign("s" * 16, 1700000001, body) != f"v1={expected}"


def test_webhook_body_names_the_recipient_device():
    body = webhook_body(notification(token="gateway-token", attempt=3))
    assert body["recipient"] == {
        "account_id": "acct-recipient",
        "device_id": "dev-1",
        "token": "gateway-token",
    }
    assert body["attempt"] == 3
    assert body["alert"] == {"body": "New message"}


def test_retry_after_seconds_dates_and_garbage():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after(httpx.Headers({"Retry-After": "30"}), now.timestamp()) == 30
    assert retry_after(httpx.Headers({"Retry-After": later}), now.timestamp()) == 90
    assert retry_after(httpx.Headers({"Retry-After": "soon"}), now.timestamp()) is None
    assert retry_after(httpx.Headers(), now.timestamp()) is None
    huge = httpx.Headers({"Retry-After": str(10**9)})
    assert retry_after(huge, now.timestamp()) == MAX_RETRY_AFTER_SECONDS
