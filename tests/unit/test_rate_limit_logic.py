"""The shared limiter's pure parts with an injected clock: bucket arithmetic,
all-or-none takes across tags, refusals as RESOURCE_EXHAUSTED naming the
limit, the Redis store's fallback to in-process buckets, the config's limits,
and the client address behind trusted proxies."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2, status_pb2
from redis.exceptions import ConnectionError as RedisConnectionError

from parley_core.config import LimitRate, LimitsSettings, Settings, settings_from_tree
from parley_core.errors import Reason, ResourceExhausted
from parley_core.limits import (
    Bucket,
    InProcessBuckets,
    Limiter,
    LimitName,
    LocalBuckets,
    Rate,
    Refusal,
    Take,
    rates_from_settings,
)
from parley_core.limits.metrics import LimiterMetrics
from parley_core.rpc.address import ClientAddresses, address_key, client_ip, peer_ip
from parley_core.rpc.status import to_grpc_status
from parley_core.storage.ratelimit import RedisBuckets
from parley_dev.limits import unreached_limits

ROOT = Path(__file__).resolve().parents[2]

SECOND = 60.0  # per_minute of one token a second


def bucket(key: str, burst: int, per_minute: float = SECOND) -> Bucket:
    return Bucket(key, Rate(burst, per_minute))


# -- bucket arithmetic --------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    local = LocalBuckets()
    a = [[bucket("a", 3)]]
    assert [local.take(a, now_ms=0) for _ in range(3)] == [None, None, None]
    refused = local.take(a, now_ms=0)
    assert refused is not None and refused.seconds == 1.0
    refused = local.take(a, now_ms=400)
    assert refused is not None and refused.seconds == 0.6
    assert local.take([[bucket("b", 3)]], now_ms=400) is None, "buckets are per key"
    assert local.take(a, now_ms=1000) is None
    # Idle for long refills to the burst, never beyond.
    results = [local.take(a, now_ms=100_000) for _ in range(4)]
    assert results[:3] == [None] * 3 and results[3] is not None


def test_a_refused_take_spends_no_bucket_of_any_group() -> None:
    local = LocalBuckets()
    tight, loose = bucket("tight", 1), bucket("loose", 5)
    assert local.take([[tight], [loose]], now_ms=0) is None
    refused = local.take([[loose], [tight]], now_ms=0)
    assert refused is not None and (refused.group, refused.bucket) == (1, 0)
    # The refused take left the loose bucket's 4 tokens alone.
    assert [local.take([[loose]], now_ms=0) for _ in range(5)][-1] is not None
    assert [local.take([[bucket("loose2", 5)]], now_ms=0) for _ in range(4)] == [None] * 4


def test_the_longest_wait_names_the_refusing_bucket() -> None:
    local = LocalBuckets()
    slow, fast = bucket("slow", 1, per_minute=6), bucket("fast", 1, per_minute=60)
    local.take([[slow, fast]], now_ms=0)
    refused = local.take([[fast, slow]], now_ms=0)
    assert refused is not None and refused.bucket == 1 and refused.seconds == 10.0


def test_in_process_buckets_stay_bounded() -> None:
    local = LocalBuckets(max_buckets=10)
    for i in range(50):
        local.take([[bucket(str(i), 2)]], now_ms=i * 10_000)
    assert len(local) <= 10


# -- the limiter --------------------------------------------------------------

RATES = {name: Rate(1000, 1000) for name in LimitName}


def limiter(**rates: Rate) -> Limiter:
    table = dict(RATES)
    for name, rate in rates.items():
        table[LimitName(name)] = rate
    return Limiter(InProcessBuckets(), table, names=list(LimitName))


async def test_takes_on_one_tag_or_several_are_all_or_none() -> None:
    limits = limiter(send_per_device=Rate(2, 60), send_per_conversation=Rate(3, 60))
    device = Take(LimitName.SEND_PER_DEVICE, "alice", key="phone")
    account = Take(LimitName.SEND_PER_ACCOUNT, "alice")
    group = Take(LimitName.SEND_PER_CONVERSATION, "group-1")
    await limits.take(device, account, group, now=0)
    await limits.take(device, account, group, now=0)
    with pytest.raises(ResourceExhausted) as refused:
        await limits.take(device, account, group, now=0)
    assert refused.value.reason == Reason.RATE_LIMITED
    assert refused.value.metadata == {"limit": "send_per_device"}
    assert refused.value.retry_after_seconds == 1.0
    # The conversation kept its last token: another device can still post there.
    other = Take(LimitName.SEND_PER_DEVICE, "bob", key="laptop")
    await limits.take(other, Take(LimitName.SEND_PER_ACCOUNT, "bob"), group, now=0)
    with pytest.raises(ResourceExhausted) as refused:
        await limits.take(other, Take(LimitName.SEND_PER_ACCOUNT, "bob"), group, now=0)
    assert refused.value.metadata == {"limit": "send_per_conversation"}
    assert limits.refused[LimitName.SEND_PER_DEVICE] == 1
    assert limits.refused[LimitName.SEND_PER_CONVERSATION] == 1
    # A second later each bucket has a token again.
    await limits.take(device, account, group, now=1.0)


async def test_check_counts_nothing_until_the_caller_refuses() -> None:
    limits = limiter(edit_per_account=Rate(1, 60))
    edit = Take(LimitName.EDIT_PER_ACCOUNT, "alice")
    assert await limits.check(edit, now=0) is None
    refusal = await limits.check(edit, now=0.5)
    assert refusal is not None and refusal.limit == LimitName.EDIT_PER_ACCOUNT
    assert refusal.retry_after_seconds == 0.5
    assert limits.refused[LimitName.EDIT_PER_ACCOUNT] == 0
    error = limits.refuse(refusal)
    assert limits.refused[LimitName.EDIT_PER_ACCOUNT] == 1
    assert isinstance(error, ResourceExhausted)


class _CountingStore(InProcessBuckets):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def take(self, groups: Any, *, now_ms: int) -> Any:
        self.calls += 1
        return await super().take(groups, now_ms=now_ms)


async def test_a_refused_bucket_is_remembered_until_its_next_token_is_due() -> None:
    store = _CountingStore()
    table = rates_from_settings(LimitsSettings())
    table[LimitName.SEND_PER_DEVICE] = Rate(1, 60)
    limits = Limiter(store, table, names=list(LimitName))
    device = Take(LimitName.SEND_PER_DEVICE, "alice", key="phone")
    account = Take(LimitName.SEND_PER_ACCOUNT, "alice")
    assert await limits.check(device, account, now=0) is None
    first = await limits.check(device, account, now=0.25)
    assert first is not None and first.retry_after_seconds == 0.75
    assert store.calls == 2
    # Until the token is due the refusal is answered here, with the time left.
    again = await limits.check(device, account, now=0.5)
    assert again == Refusal(LimitName.SEND_PER_DEVICE, 0.5)
    assert store.calls == 2 and limits.remembered_refusals == 1
    # Another device of the account is not held back by it.
    other = Take(LimitName.SEND_PER_DEVICE, "alice", key="laptop")
    assert await limits.check(other, account, now=0.5) is None
    # Once due, the store is asked again and the take passes.
    assert await limits.check(device, account, now=1.0) is None
    assert store.calls == 4


async def test_a_limiter_takes_only_its_own_limits_and_can_be_off() -> None:
    keys_only = Limiter(InProcessBuckets(), RATES, names=[LimitName.SIGNUP_OVERALL])
    with pytest.raises(ValueError, match="send_per_device"):
        await keys_only.take(Take(LimitName.SEND_PER_DEVICE, "a"), now=0)
    with pytest.raises(ValueError, match="no rate"):
        Limiter(InProcessBuckets(), {}, names=[LimitName.SIGNUP_OVERALL])
    off = Limiter(
        InProcessBuckets(),
        {LimitName.SIGNUP_OVERALL: Rate(1, 1)},
        names=[LimitName.SIGNUP_OVERALL],
        enabled=False,
    )
    for _ in range(5):
        await off.take(Take(LimitName.SIGNUP_OVERALL, "signup"), now=0)


def test_bucket_keys_carry_the_tag_as_a_cluster_hash_tag() -> None:
    take = Take(LimitName.SEND_PER_DEVICE, "acc-1", key="dev-1")
    assert take.bucket_key == "parley:rl:{acc-1}:send_per_device:dev-1"
    assert (
        Take(LimitName.SEND_PER_ACCOUNT, "acc-1").bucket_key == "parley:rl:{acc-1}:send_per_account"
    )


def test_a_refusal_is_resource_exhausted_with_retry_info_and_the_limit_name() -> None:
    limits = limiter()
    error = limits.refuse(Refusal(LimitName.SIGNUP_PER_ADDRESS, 2.5))
    status = to_grpc_status(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = status_pb2.Status.FromString(
        dict(status.trailing_metadata)["grpc-status-details-bin"]
    ).details
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert details[0].Unpack(info) and details[1].Unpack(retry)
    assert info.reason == "ERROR_REASON_RATE_LIMITED"
    assert dict(info.metadata) == {"limit": "signup_per_address"}
    assert retry.retry_delay.ToMilliseconds() == 2500


def test_every_limit_has_a_rate_and_is_exported_from_zero() -> None:
    fields = {
        name for name, field in LimitsSettings.model_fields.items() if field.annotation is LimitRate
    }
    assert fields == {name.value for name in LimitName}
    rates = rates_from_settings(Settings().limits)
    assert rates[LimitName.BUNDLE_FETCH_PER_TARGET] == Rate(20, 20.0)
    limits = Limiter(InProcessBuckets(), rates, names=[LimitName.SIGNUP_OVERALL])
    families = list(LimiterMetrics(limits, service="keys").collect())
    refused = {tuple(s.labels.values()): s.value for s in families[0].samples}
    assert refused == {("keys", "signup_overall"): 0}
    assert families[1].samples[0].value == 0


def test_limits_are_configurable_and_checked() -> None:
    settings = settings_from_tree(
        {"limits": {"send_per_device": {"burst": 5, "per_minute": 30}}},
        {"PARLEY_LIMITS__TRUSTED_PROXIES": '["10.0.0.0/8", "fd00::1"]'},
    )
    assert settings.limits.send_per_device == LimitRate(burst=5, per_minute=30)
    assert settings.limits.trusted_proxies == ("10.0.0.0/8", "fd00::1")
    with pytest.raises(Exception, match=r"limits.trusted_proxies"):
        settings_from_tree({"limits": {"trusted_proxies": ["not-an-address"]}}, {})
    with pytest.raises(Exception, match=r"limits.send_per_device.burst"):
        settings_from_tree({"limits": {"send_per_device": {"burst": 0, "per_minute": 1}}}, {})


# -- the Redis store's fallback -------------------------------------------------


class _DownRedis:
    """A Redis whose every pipeline fails to connect."""

    def __init__(self) -> None:
        self.calls = 0

    async def call_many(self, calls: Sequence[Any], **_: Any) -> list[Any]:
        self.calls += 1
        raise RedisConnectionError("down")


async def test_without_redis_the_store_limits_in_process_and_retries_redis_later() -> None:
    redis = _DownRedis()
    store = RedisBuckets(redis, timeout_seconds=0.1, fallback_seconds=2.0)  # type: ignore[arg-type]
    limits = Limiter(store, RATES | {LimitName.SEND_PER_ACCOUNT: Rate(2, 30)}, names=RATES)
    send = Take(LimitName.SEND_PER_ACCOUNT, "alice")
    await limits.take(send, now=0)
    assert limits.degraded and redis.calls == 1
    await limits.take(send, now=0.5)
    with pytest.raises(ResourceExhausted):
        await limits.take(send, now=1.0)
    # Within the fallback window Redis is not asked again; after it, it is.
    assert redis.calls == 1
    await limits.take(send, now=2.5)
    assert redis.calls == 2 and limits.degraded


# -- client addresses -----------------------------------------------------------


def nets(*cidrs: str) -> list[Any]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def test_the_peer_is_the_client_unless_it_is_a_trusted_proxy() -> None:
    assert str(peer_ip("ipv4:203.0.113.7:50000")) == "203.0.113.7"
    assert str(peer_ip("ipv6:%5B2001:db8::1%5D:443")) == "2001:db8::1"
    assert str(peer_ip("ipv6:[2001:db8::1]:443")) == "2001:db8::1"
    assert str(peer_ip("ipv6:%5B::ffff:198.51.100.2%5D:1")) == "198.51.100.2"
    assert peer_ip("unix:/tmp/socket") is None
    spoofed = ["198.51.100.9"]
    # No trusted proxies: the header is never believed.
    assert str(client_ip("ipv4:203.0.113.7:1", spoofed, [])) == "203.0.113.7"
    # An untrusted peer's header is not believed either.
    assert str(client_ip("ipv4:203.0.113.7:1", spoofed, nets("10.0.0.0/8"))) == "203.0.113.7"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() -> None:
    proxies = nets("10.0.0.0/8", "fd00::/8")
    # The client wrote the first entry itself; the edge proxy appended the real one.
    header = ["1.1.1.1, 198.51.100.9", "10.0.0.5"]
    assert str(client_ip("ipv4:10.0.0.2:1", header, proxies)) == "198.51.100.9"
    assert str(client_ip("ipv6:%5Bfd00::2%5D:1", ["[2001:db8::5]:443"], proxies)) == "2001:db8::5"
    assert str(client_ip("ipv4:10.0.0.2:1", ["198.51.100.9:5000"], proxies)) == "198.51.100.9"
    # A hop that is no address stops the walk at the last proxy.
    assert str(client_ip("ipv4:10.0.0.2:1", ["198.51.100.9, junk"], proxies)) == "10.0.0.2"
    # Every hop a proxy (traffic from inside): the leftmost one.
    assert str(client_ip("ipv4:10.0.0.2:1", ["10.1.1.1"], proxies)) == "10.1.1.1"
    assert str(client_ip("ipv4:10.0.0.2:1", [], proxies)) == "10.0.0.2"


def test_ipv6_clients_are_keyed_by_their_slash_64() -> None:
    one = address_key(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
    assert one == address_key(ipaddress.ip_address("2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::/64"
    assert address_key(ipaddress.ip_address("203.0.113.7")) == "203.0.113.7"
    assert address_key(None) == "local"


class _Context:
    def __init__(self, peer: str, metadata: list[tuple[str, str]]) -> None:
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata


def test_client_addresses_read_the_forwarded_header_only_from_listed_proxies() -> None:
    context = _Context("ipv4:127.0.0.1:9", [("x-forwarded-for", "198.51.100.9")])
    assert ClientAddresses([]).of(context) == "127.0.0.1"
    assert ClientAddresses(["127.0.0.1/32"]).of(context) == "198.51.100.9"


def test_the_bench_limits_file_names_every_limit_unreached() -> None:
    loaded = yaml.safe_load((ROOT / "bench" / "limits.yaml").read_text())
    assert loaded == {"limits": unreached_limits()}
    assert set(loaded["limits"]) == {name.value for name in LimitName}
    settings_from_tree(loaded, {})


class _CountingRedis:
    """A Redis that grants every take and records each pipeline's size."""

    def __init__(self) -> None:
        self.pipelines: list[int] = []

    async def call_many(self, calls: Sequence[Any], **_: Any) -> list[Any]:
        await asyncio.sleep(0.01)  # the round trip
        self.pipelines.append(len(calls))
        return [[1, 0, 0]] * len(calls)


async def test_takes_of_concurrent_requests_share_a_round_trip() -> None:
    redis = _CountingRedis()
    store = RedisBuckets(redis, timeout_seconds=1, fallback_seconds=1)  # type: ignore[arg-type]
    limits = Limiter(store, RATES, names=RATES)

    async def send(n: int) -> None:
        await limits.take(
            Take(LimitName.SEND_PER_DEVICE, f"a{n}", key="d"),
            Take(LimitName.SEND_PER_CONVERSATION, "group"),
            now=0,
        )

    await send(0)
    await asyncio.gather(*(send(n) for n in range(1, 21)))
    # The lone request went alone; the twenty that came together share one
    # round trip (two script calls each: their device's tag and the group's).
    assert redis.pipelines == [2, 40]
