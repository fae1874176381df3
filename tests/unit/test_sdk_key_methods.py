"""The SDK's key directory calls without servers: model conversion, uploads split
into calls of at most 100, and the usual UNAVAILABLE-only retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio

from parley.keys.v1 import keys_pb2 as kpb
from parley_sdk import (
    Client,
    Credentials,
    InvalidArgumentError,
    OneTimePreKey,
    PreKeyBundle,
    RetryPolicy,
    SignedPreKey,
    UnavailableError,
)
from parley_sdk._session import Session
from tests.unit.test_sdk_client import FakeMessages, Responder


def rpc_error(code: grpc.StatusCode) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), "nope", None)


# The key directory answers like any other service in these tests.
FakeKeyService = FakeMessages


SPK = SignedPreKey(key_id=7, public_key=b"\x01" * 32, signature=b"\x02" * 64)


def one_time(count: int, start: int = 1) -> list[OneTimePreKey]:
    return [OneTimePreKey(key_id=start + i, public_key=bytes([i % 256]) * 32) for i in range(count)]


def key_client() -> tuple[Client, FakeKeyService]:
    now = datetime.now(UTC)
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=now + timedelta(hours=1),
            refresh_token="rt",
            refresh_token_expire_time=now + timedelta(days=30),
            account_id="me",
            device_id="dev",
        ),
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        stream_retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=None,
    )
    directory = FakeKeyService()
    session.key_directory = directory  # type: ignore[assignment]
    return Client(session, page_size=50), directory


def counting(held: list[int]) -> Responder:
    """A responder that adds each request's keys to a running count, like the server."""

    def respond(request: kpb.UploadPreKeysRequest) -> kpb.UploadPreKeysResponse:
        held[0] += len(request.pre_keys)
        return kpb.UploadPreKeysResponse(pre_key_count=held[0])

    return respond


def test_models_round_trip_through_protos() -> None:
    assert SignedPreKey.from_proto(SPK.to_proto()) == SPK
    [key] = one_time(1, start=42)
    assert OneTimePreKey.from_proto(key.to_proto()) == key
    full = PreKeyBundle("dev", b"\x03" * 32, SPK, key, exhausted=False)
    assert PreKeyBundle.from_proto(full.to_proto()) == full
    empty = PreKeyBundle("dev", b"\x03" * 32, SPK, None, exhausted=True)
    proto = empty.to_proto()
    # Unset, not an empty message: key id 0 would otherwise look like a real key.
    assert not proto.HasField("one_time_pre_key")
    assert PreKeyBundle.from_proto(proto) == empty


async def test_upload_splits_into_calls_of_at_most_100() -> None:
    client, directory = key_client()
    held = [0]
    async with client:
        upload = directory.answer("UploadPreKeys", counting(held))
        keys = one_time(250)
        assert await client.upload_pre_keys(keys) == 250
        assert [len(r.pre_keys) for r in upload.requests] == [100, 100, 50]
        sent = [OneTimePreKey.from_proto(k) for r in upload.requests for k in r.pre_keys]
        assert sent == keys
        upload.requests.clear()
        assert await client.upload_pre_keys(one_time(100, start=1000)) == 350
        assert [len(r.pre_keys) for r in upload.requests] == [100]


async def test_upload_of_nothing_only_asks_for_the_count() -> None:
    client, directory = key_client()
    async with client:
        directory.answer("GetPreKeyCount", lambda r: kpb.GetPreKeyCountResponse(count=9))
        assert await client.upload_pre_keys([]) == 9
        assert await client.pre_key_count() == 9


async def test_publish_sends_the_first_100_and_uploads_the_rest() -> None:
    client, directory = key_client()
    held = [0]
    async with client:

        def publish(request: kpb.PublishKeysRequest) -> kpb.PublishKeysResponse:
            held[0] += len(request.one_time_pre_keys)
            return kpb.PublishKeysResponse(pre_key_count=held[0])

        published = directory.answer("PublishKeys", publish)
        upload = directory.answer("UploadPreKeys", counting(held))
        count = await client.publish_keys(
            identity_key=b"\x04" * 32, signed_pre_key=SPK, one_time_pre_keys=one_time(150)
        )
        assert count == 150
        [sent] = published.requests
        assert sent.identity_key == b"\x04" * 32
        assert SignedPreKey.from_proto(sent.signed_pre_key) == SPK
        assert len(sent.one_time_pre_keys) == 100
        assert [len(r.pre_keys) for r in upload.requests] == [50]

        assert await client.publish_keys(identity_key=b"\x04" * 32, signed_pre_key=SPK) == 150
        assert len(published.requests[1].one_time_pre_keys) == 0
        assert len(upload.requests) == 1


async def test_bundles_are_typed_and_the_call_retries_only_unavailable() -> None:
    client, directory = key_client()
    [key] = one_time(1)
    reply = kpb.GetPreKeyBundlesResponse(
        bundles=[
            PreKeyBundle("a", b"\x05" * 32, SPK, key, exhausted=False).to_proto(),
            PreKeyBundle("b", b"\x06" * 32, SPK, None, exhausted=True).to_proto(),
        ]
    )
    async with client:
        fetch = directory.answer(
            "GetPreKeyBundles", lambda r: reply, errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)]
        )
        bundles = await client.get_pre_key_bundles("acct")
        assert [(b.device_id, b.one_time_pre_key, b.exhausted) for b in bundles] == [
            ("a", key, False),
            ("b", None, True),
        ]
        assert [r.account_id for r in fetch.requests] == ["acct", "acct"]

        directory.answer(
            "GetPreKeyBundles",
            lambda r: reply,
            errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 2,
        )
        with pytest.raises(UnavailableError):
            await client.get_pre_key_bundles("acct")
        refused = directory.answer(
            "UploadPreKeys",
            lambda r: kpb.UploadPreKeysResponse(),
            errors=[rpc_error(grpc.StatusCode.INVALID_ARGUMENT)],
        )
        with pytest.raises(InvalidArgumentError):
            await client.upload_pre_keys(one_time(150))
        # Not retried, and the second chunk is never sent after the first failed.
        assert len(refused.requests) == 1
