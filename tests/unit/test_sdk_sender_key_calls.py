"""The SDK's end-to-end encryption calls without servers: device keys, bundles for
chosen devices, sender-key envelopes sent in calls of at most 500 (one request_id
per call, kept across its retries) and claimed page by page; connecting with a
store; the delivery stream preparing events before they are yielded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from parley.keys.v1 import keys_pb2 as kpb
from parley_sdk import (
    Client,
    Credentials,
    DeviceKey,
    DeviceStore,
    NotEncryptedError,
    SenderKeyEnvelope,
)
from tests.unit.test_sdk_key_methods import key_client, rpc_error


async def test_device_keys_are_asked_in_calls_of_at_most_256_accounts() -> None:
    client, directory = key_client()

    def respond(request: kpb.GetDeviceKeysRequest) -> kpb.GetDeviceKeysResponse:
        return kpb.GetDeviceKeysResponse(
            devices=[
                kpb.DeviceKey(account_id=a, device_id="d", identity_key=b"\x01" * 32)
                for a in request.account_ids
            ]
        )

    async with client:
        calls = directory.answer("GetDeviceKeys", respond)
        accounts = [f"acct-{i}" for i in range(300)]
        found = await client.get_device_keys([*accounts, accounts[0]])
        assert [len(r.account_ids) for r in calls.requests] == [256, 44]
        assert found[0] == DeviceKey("acct-0", "d", b"\x01" * 32)
        assert [k.account_id for k in found] == accounts


async def test_bundles_can_be_limited_to_some_devices() -> None:
    client, directory = key_client()
    async with client:
        fetch = directory.answer("GetPreKeyBundles", lambda r: kpb.GetPreKeyBundlesResponse())
        assert await client.get_pre_key_bundles("acct", device_ids=["d1", "d2"]) == []
        assert list(fetch.requests[0].device_ids) == ["d1", "d2"]


async def test_sender_keys_go_in_calls_of_500_each_with_its_own_retried_request_id() -> None:
    client, directory = key_client()
    async with client:
        send = directory.answer(
            "SendSenderKeys",
            lambda r: kpb.SendSenderKeysResponse(stored=len(r.envelopes)),
            errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)],
        )
        envelopes = [SenderKeyEnvelope("acct", f"d{i}", b"sealed") for i in range(1200)]
        assert await client.send_sender_keys("group", envelopes) == 1200
        # The first call failed once and was retried with the same request.
        sizes = [len(r.envelopes) for r in send.requests]
        assert sizes == [500, 500, 500, 200]
        ids = [r.request_id for r in send.requests]
        assert ids[0] == ids[1] and len(set(ids)) == 3
        assert {r.conversation_id for r in send.requests} == {"group"}
        first = send.requests[0].envelopes[0]
        assert (first.recipient_device_id, first.ciphertext) == ("d0", b"sealed")


async def test_claims_follow_more_until_the_server_has_none() -> None:
    client, directory = key_client()
    pages = [
        kpb.ClaimSenderKeysResponse(
            envelopes=[
                kpb.SenderKeyEnvelope(
                    envelope_id="e1",
                    conversation_id="g",
                    sender_account_id="a",
                    sender_device_id="d",
                    ciphertext=b"c1",
                )
            ],
            more=True,
        ),
        kpb.ClaimSenderKeysResponse(
            envelopes=[kpb.SenderKeyEnvelope(envelope_id="e2", ciphertext=b"c2")]
        ),
    ]
    async with client:
        claim = directory.answer("ClaimSenderKeys", lambda r: pages.pop(0))
        claimed = await client.claim_sender_keys(page_size=1)
        assert [e.envelope_id for e in claimed] == ["e1", "e2"]
        assert (claimed[0].sender_account_id, claimed[0].conversation_id) == ("a", "g")
        assert claimed[0].create_time is None
        assert [r.page_size for r in claim.requests] == [1, 1]


async def test_encryption_methods_need_a_store() -> None:
    client, _ = key_client()
    async with client:
        assert not client.encrypted
        with pytest.raises(NotEncryptedError):
            await client.send_text("c", "hi")
        with pytest.raises(NotEncryptedError):
            client.read_history("c")


def credentials(device_id: str) -> Credentials:
    return Credentials.from_dict(
        {
            "access_token": "at",
            "access_token_expire_time": "2099-01-01T00:00:00+00:00",
            "refresh_token": "rt",
            "refresh_token_expire_time": "2099-01-01T00:00:00+00:00",
            "account_id": "acct",
            "device_id": device_id,
        }
    )


async def test_a_store_needs_credentials_or_a_handle_and_holds_one_device(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    with pytest.raises(ValueError, match="no credentials"):
        await Client.connect(keys_target="127.0.0.1:9", store=path)
    store = DeviceStore.open(path)
    store.set_setting("credentials", credentials("d1").to_json())
    store.close()
    with pytest.raises(ValueError, match="belongs to device d1"):
        await Client.connect(keys_target="127.0.0.1:9", store=path, credentials=credentials("d2"))
    with pytest.raises(ValueError, match="already holds"):
        await Client.sign_up(handle="someone", device_name="x", store=path)


async def test_the_stream_prepares_each_new_event_before_yielding_it() -> None:
    from parley.message.v1 import messages_pb2 as pb
    from parley_sdk import MessageEvent, StreamEvent
    from parley_sdk.stream import DeliveryStream

    prepared: list[Any] = []

    async def prepare(event: StreamEvent) -> StreamEvent:
        prepared.append(event)
        if isinstance(event, MessageEvent):
            return MessageEvent(event.message, text="plain", decryption_error=None)
        return event

    class Call:
        def __init__(self) -> None:
            message = pb.Message(conversation_id="c", seq=1, version=1, type=pb.MESSAGE_TYPE_TEXT)
            self.replies: list[Any] = [
                pb.ServerEvent(events=[pb.Event(message=message), pb.Event(message=message)]),
                None,
            ]

        async def write(self, event: Any) -> None:
            pass

        async def read(self) -> Any:
            return self.replies.pop(0)

        def cancel(self) -> None:
            pass

    client, _ = key_client()
    session: Any = client._session
    session.messages = type("Stub", (), {"Connect": lambda self, _, metadata: Call()})()
    stream = DeliveryStream(session, positions=None, sync_token="", auto_ack=False, prepare=prepare)
    events = [event async for event in stream]
    # The second copy is a replay (same version): dropped before preparing.
    assert len(prepared) == 1
    assert [e.text for e in events if isinstance(e, MessageEvent)] == ["plain"]
    await client.close()
