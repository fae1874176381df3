"""`parley up --regions eu,us` as a developer runs it: two regions, their proxies, Ctrl-C."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from parley_core.topology import parse_topology
from parley_dev.probes import grpc_health_serving
from parley_dev.process import port_is_free
from parley_dev.regions import fixed_layout
from tests.parley_up import parley_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REGIONS = ["eu", "us"]
# Two whole stacks start side by side; on a loaded 2-core machine that took
# over the 120 s one stack is given.
READY_SECONDS = 300.0


def _free_offset() -> int:
    """A --port-offset at which every port of both regions and their proxies is free now."""
    for _ in range(100):
        offset = random.randrange(20000, 30000)
        ports, proxies = fixed_layout(REGIONS, offset=offset)
        every = [p for each in ports.values() for p in each.all()] + list(proxies.values())
        if all(port_is_free(p) for p in every):
            return offset
    raise AssertionError("no free block of ports for two regions")


async def test_parley_up_runs_two_regions_joined_by_proxies(tmp_path: Path) -> None:
    offset = _free_offset()
    ports, proxies = fixed_layout(REGIONS, offset=offset)
    args = ["--regions", ",".join(REGIONS), "--data-dir", str(tmp_path)]
    async with parley_up(
        [*args, "--port-offset", str(offset)], ready_seconds=READY_SECONDS
    ) as output:
        assert "Regions: eu, us." in "".join(output)
        for name in REGIONS:
            await grpc_health_serving(f"127.0.0.1:{ports[name].message[0]}", timeout=5.0)
            topology = parse_topology((tmp_path / name / "topology.json").read_bytes())
            assert topology.region == name
        eu = parse_topology((tmp_path / "eu" / "topology.json").read_bytes())
        assert eu.regions["us"].peer_endpoint == f"127.0.0.1:{proxies[('eu', 'us', 'message')]}"
        # eu's way to us works: the proxy relays to us's svc_message.
        await grpc_health_serving(f"127.0.0.1:{proxies[('eu', 'us', 'message')]}", timeout=5.0)
    assert "stopped; data kept in" in "".join(output)
