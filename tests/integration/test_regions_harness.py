"""Two regions on this machine, joined by the harness's fault proxies.

Both regions start side by side, every service of each answers SERVING and
reports its own region (parley_topology_region, from the topology file the
harness wrote), and the proxy from eu to us carries, cuts and heals a gRPC
call to us's peer endpoint while us itself keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from parley_dev.probes import grpc_health_serving
from parley_dev.regions import RegionsStack
from parley_dev.stack import LocalStack
from tests.helpers import http_get, wait_until

# Two stacks start in the first test's time: more than one stack's 180 s on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

# The topology file is read before a service serves, so no waiting is needed
# for it; heal is followed by gRPC's reconnect backoff (1 s at first).
HEAL_SECONDS = 15.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(root=tmp_path_factory.mktemp("regions"), regions=["eu", "us"])
    async with harness:
        yield harness


def _services(stack: LocalStack) -> dict[str, tuple[str, str]]:
    """Service -> (gRPC target, metrics URL)."""
    return {
        "svc_keys": (stack.keys_target, stack.keys_metrics_url),
        "svc_message": (stack.message_targets[0], stack.message_metrics_urls[0]),
        "svc_presence": (stack.presence_target, stack.presence_metrics_url),
        "svc_media": (stack.media_target, stack.media_metrics_url),
        "svc_search": (stack.search_target, stack.search_metrics_url),
    }


async def _topology_series(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = await http_get(url)
    assert status == 200
    return {
        sample.name: [(dict(s.labels), s.value) for s in family.samples if s.name == sample.name]
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name.startswith("parley_topology_")
    }


async def test_every_service_of_each_region_serves_and_names_its_region(
    regions: RegionsStack,
) -> None:
    for name in ("eu", "us"):
        for service, (target, metrics_url) in _services(regions.region(name)).items():
            await grpc_health_serving(target, timeout=5.0)
            series = await _topology_series(metrics_url)
            assert series["parley_topology_region"] == [({"region": name}, 1.0)], service
            assert series["parley_topology_regions"] == [({}, 2.0)], service
            assert series["parley_topology_generation"] == [({}, 1.0)], service


async def _check(target: str, timeout: float) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply: health_pb2.HealthCheckResponse = await stub.Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return reply


async def test_the_proxy_between_regions_carries_cuts_and_heals_a_peer_call(
    regions: RegionsStack,
) -> None:
    proxy = regions.proxy("eu", "us")
    peer = regions.peer_endpoint("eu", "us")
    assert peer == proxy.address
    assert peer != regions.region("us").message_targets[0]

    before = proxy.stats.bytes_up
    reply = await _check(peer, timeout=5.0)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert proxy.stats.bytes_up > before

    proxy.cut()
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(peer, timeout=1.0)
        assert refused.value.code() in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE,
        )
        assert time.monotonic() - started < 5.0
        # The partition is between the regions: us still serves its own clients,
        # and the other direction is untouched.
        await grpc_health_serving(regions.region("us").message_targets[0], timeout=5.0)
        await grpc_health_serving(regions.peer_endpoint("us", "eu"), timeout=5.0)
    finally:
        proxy.heal()

    async def answers() -> bool:
        try:
            return (await _check(peer, timeout=1.0)).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
        except grpc.aio.AioRpcError:
            return False

    await wait_until(answers, timeout=HEAL_SECONDS, what="a health check through the healed proxy")
