"""Media across two regions (issue 20, parts 2 and 5; docs/design/regions.md,
"Residency").

Each region runs its own svc_media and SeaweedFS, joined by fault proxies.
An upload goes to the uploader's home region whichever region it reaches,
and its media id names that region; a member of a conversation homed in the
other region downloads it through its own region (bytes match); a media id
forwarded into a conversation nobody in the object's region belongs to is
still readable (the holder asks every region's svc_message), and so is
a forward only the holder region can prove readable; a cut holder
region is a fast REGION_UNAVAILABLE; and a conversation whose members are
all homed in a pinned region (``residency.homeOnlyData`` holds messages)
leaves nothing in the other region's MongoDB, Redis or S3 after traffic,
media included, even when every call of it went through the other region.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc_media
from parley.message.v1 import messages_pb2 as pb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.regions import RegionResidency, RegionsStack
from svc_media.model import region_number_of_media
from tests.helpers import TEST_LIMITS, http_get, wait_until
from tests.media_world import Blob
from tests.media_world import send as http_send
from tests.region_users import sign_up_in
from tests.store_scan import scan_all
from tests.users import Device, error_reason, rid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EU, US = "eu", "us"
NUMBERS = {EU: 1, US: 2}
CALL_SECONDS = 15.0
FAST_REFUSAL_SECONDS = 3.0
REPLICATION_SECONDS = 30.0
# Several replicator batch windows (0.2 s each) and a round trip.
REPLICATION_WINDOW_SECONDS = 2.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(
        root=tmp_path_factory.mktemp("region-media"),
        regions=[EU, US],
        residency={US: RegionResidency(home_only_data=("messages",))},
        extra_config=TEST_LIMITS,
    )
    async with harness:
        yield harness


async def _sign_up(regions: RegionsStack, home: str, handle: str | None = None) -> Device:
    return await sign_up_in(regions, home, handle=handle, timeout=CALL_SECONDS)


def _media(regions: RegionsStack, region: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(regions.region(region).media_target)


def _messages(regions: RegionsStack, region: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(regions.region(region).message_targets[0])


async def _upload(regions: RegionsStack, via: str, device: Device, blob: Blob) -> str:
    """Uploads ``blob`` through region ``via``; its media id."""
    async with _media(regions, via) as channel:
        media = mgrpc_media.MediaServiceStub(channel)
        created = await media.CreateUpload(blob.request(), metadata=device.md, timeout=CALL_SECONDS)
        assert created.WhichOneof("result") == "upload"
        put = await http_send(created.upload.put, blob.data)
        assert put.status_code == 200, put.text
        done = await media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=created.upload.upload_id),
            metadata=device.md,
            timeout=CALL_SECONDS,
        )
    assert done.sha256 == blob.sha256
    return done.media_id


async def _download(regions: RegionsStack, via: str, device: Device, media_id: str) -> bytes:
    async with _media(regions, via) as channel:
        grant = await mgrpc_media.MediaServiceStub(channel).GetDownload(
            mpb.GetDownloadRequest(media_id=media_id), metadata=device.md, timeout=CALL_SECONDS
        )
    reply = await http_send(grant.get)
    assert reply.status_code == 200, reply.text
    return reply.content


async def _group(regions: RegionsStack, via: str, creator: Device, others: list[Device]) -> str:
    async with _messages(regions, via) as channel:
        view = await mgrpc.MessageServiceStub(channel).CreateGroup(
            pb.CreateGroupRequest(
                request_id=rid(), title="media", member_account_ids=[o.account_id for o in others]
            ),
            metadata=creator.md,
            timeout=CALL_SECONDS,
        )
    conversation_id: str = view.conversation.conversation_id
    return conversation_id


async def _send_media(
    regions: RegionsStack,
    via: str,
    device: Device,
    conversation_id: str,
    body: bytes,
    media_ids: list[str],
) -> pb.Message:
    async with _messages(regions, via) as channel:
        reply = await mgrpc.MessageServiceStub(channel).SendMessage(
            pb.SendMessageRequest(
                request_id=rid(),
                conversation_id=conversation_id,
                type=pb.MESSAGE_TYPE_TEXT,
                body=body,
                media_ids=media_ids,
            ),
            metadata=device.md,
            timeout=CALL_SECONDS,
        )
    return reply.message


async def test_media_lives_in_the_uploaders_home_and_downloads_through_any_region(
    regions: RegionsStack,
) -> None:
    alice = await _sign_up(regions, EU)
    bob = await _sign_up(regions, US)
    # Both upload through the region that is not their home: each object goes home.
    from_alice, from_bob = Blob.random(40_000), Blob.random(30_000)
    alice_media = await _upload(regions, US, alice, from_alice)
    bob_media = await _upload(regions, EU, bob, from_bob)
    assert region_number_of_media(alice_media) == NUMBERS[EU]
    assert region_number_of_media(bob_media) == NUMBERS[US]
    assert alice_media.startswith(from_alice.sha256.hex())
    # An eu-owned group with a member homed in us; each sends its own media
    # (bob's send is forwarded to eu, whose svc_media reserves at us).
    group = await _group(regions, EU, alice, [bob])
    await _send_media(regions, EU, alice, group, b"from alice", [alice_media])
    await _send_media(regions, US, bob, group, b"from bob", [bob_media])

    # Each downloads the other's through its own region: the holder region
    # decides and signs, the bytes come from the holder's store.
    assert await _download(regions, US, bob, alice_media) == from_alice.data
    assert await _download(regions, EU, alice, bob_media) == from_bob.data
    # And through the other region too.
    assert await _download(regions, EU, bob, alice_media) == from_alice.data

    # An outsider is refused wherever it asks, the same refusal as locally.
    mallory = await _sign_up(regions, US)
    for via in (EU, US):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _download(regions, via, mallory, alice_media)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_media_forwarded_where_nobody_is_homed_in_its_region_stays_readable(
    regions: RegionsStack,
) -> None:
    """us holds bob's object, but the eu-only group it is forwarded into never
    reaches us: us asks eu's svc_message whether carol may read it."""
    alice, carol = await _sign_up(regions, EU), await _sign_up(regions, EU)
    bob = await _sign_up(regions, US)
    blob = Blob.random(20_000)
    media_id = await _upload(regions, US, bob, blob)
    shared = await _group(regions, EU, alice, [bob])
    await _send_media(regions, US, bob, shared, b"look", [media_id])
    eu_only = await _group(regions, EU, alice, [carol])
    # alice may read it through the shared group, so she may forward it.
    await _send_media(regions, EU, alice, eu_only, b"forwarded", [media_id])
    assert await _download(regions, EU, carol, media_id) == blob.data


async def test_a_forward_proven_only_where_the_object_lives_is_accepted(
    regions: RegionsStack,
) -> None:
    """ben may read ann's media through a us-only group, which eu never holds;
    he forwards it into an eu-owned group: eu's svc_message cannot prove it,
    us (holding the object and the group) can."""
    ann, ben = await _sign_up(regions, US), await _sign_up(regions, US)
    alice, carol = await _sign_up(regions, EU), await _sign_up(regions, EU)
    blob = Blob.random(15_000)
    media_id = await _upload(regions, US, ann, blob)
    us_only = await _group(regions, US, ann, [ben])
    await _send_media(regions, US, ann, us_only, b"original", [media_id])
    mixed = await _group(regions, EU, alice, [ben, carol])
    await _send_media(regions, US, ben, mixed, b"forwarded", [media_id])
    assert await _download(regions, EU, carol, media_id) == blob.data


async def test_a_cut_holder_region_is_refused_fast(regions: RegionsStack) -> None:
    alice, bob = await _sign_up(regions, EU), await _sign_up(regions, US)
    blob = Blob.random(10_000)
    media_id = await _upload(regions, EU, alice, blob)
    group = await _group(regions, EU, alice, [bob])
    await _send_media(regions, EU, alice, group, b"pic", [media_id])
    link = regions.proxy(US, EU)
    link.cut()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _download(regions, US, bob, media_id)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(refused.value) == "ERROR_REASON_REGION_UNAVAILABLE"
            assert time.monotonic() - started < CALL_SECONDS
        # The second refusal comes from the breaker, without waiting.
        assert time.monotonic() - started < FAST_REFUSAL_SECONDS
    finally:
        link.heal()

    async def healed() -> bool:
        try:
            return await _download(regions, US, bob, media_id) == blob.data
        except grpc.aio.AioRpcError:
            return False

    await wait_until(healed, timeout=REPLICATION_SECONDS, interval=0.5, what="download healed")
    status, body = await http_get(regions.region(US).media_metrics_url)
    assert status == 200
    by_peer = {
        (sample.name, sample.labels.get("peer")): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert by_peer[("parley_media_region_refusals_total", EU)] >= 2
    assert by_peer[("parley_media_region_forwards_total", EU)] >= 1


async def test_a_pinned_conversation_leaves_nothing_in_the_other_region(
    regions: RegionsStack,
) -> None:
    """Everything goes through eu, nothing of it may stay there."""
    ann, ben = await _sign_up(regions, US), await _sign_up(regions, US)
    blobs = [Blob.random(25_000), Blob.random(12_000)]
    media_ids = [
        await _upload(regions, EU, ann, blobs[0]),
        await _upload(regions, EU, ben, blobs[1]),
    ]
    assert {region_number_of_media(m) for m in media_ids} == {NUMBERS[US]}
    group = await _group(regions, EU, ann, [ben])
    bodies = [f"pinned secret {rid()}".encode() for _ in range(3)]
    await _send_media(regions, EU, ann, group, bodies[0], [media_ids[0]])
    await _send_media(regions, EU, ben, group, bodies[1], [media_ids[1]])
    await _send_media(regions, US, ann, group, bodies[2], [])
    assert await _download(regions, EU, ben, media_ids[0]) == blobs[0].data
    assert await _download(regions, EU, ann, media_ids[1]) == blobs[1].data

    needles = [
        group.encode(),
        *bodies,
        *(m.encode() for m in media_ids),
        *(b.sha256.hex().encode() for b in blobs),
        *(b.data[1000:1064] for b in blobs),
    ]
    # Positive control: the scan finds them at home.
    home_hits, _ = await scan_all(regions.region(US), needles)
    found = {hit.needle for hit in home_hits}
    assert group.encode() in found and all(b in found for b in bodies)
    assert all(b.data[1000:1064] in found for b in blobs)
    # Give a replicator that wrongly sent the group to eu time to have done it.
    await asyncio.sleep(REPLICATION_WINDOW_SECONDS)
    hits, _ = await scan_all(regions.region(EU), needles)
    assert hits == []
