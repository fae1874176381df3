"""Domain metrics of svc_keys, read from the key directory's plain counters
and a sampled count at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from parley_core.sampling import SampledCount
from svc_keys.domain.erasure import ErasureHandler
from svc_keys.domain.keys import KeysHandler
from svc_keys.domain.revocation_push import RevocationPush


class KeyMetrics(Collector):
    def __init__(
        self,
        keys: KeysHandler,
        low_devices: SampledCount,
        erasure: ErasureHandler,
        erasures_running: SampledCount,
    ) -> None:
        self._keys = keys
        self._low_devices = low_devices
        self._erasure = erasure
        self._erasures_running = erasures_running

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        bundles = CounterMetricFamily(
            "parley_prekey_bundles",
            "Prekey bundles handed out by this process, by whether a one-time prekey "
            "was left (one_time) or the bundle holds only the signed prekey "
            "(signed_fallback).",
            labels=["pre_key"],
        )
        bundles.add_metric(["one_time"], self._keys.bundles_with_pre_key)
        bundles.add_metric(["signed_fallback"], self._keys.bundles_signed_only)
        yield bundles
        if self._low_devices.value is not None:
            yield GaugeMetricFamily(
                "parley_prekey_low_devices",
                "Devices holding fewer one-time prekeys than the low-water mark (all "
                "accounts; sampled every 5 s from pre_key_lows).",
                value=self._low_devices.value,
            )
        yield CounterMetricFamily(
            "parley_erasures_finished",
            "Account erasure jobs this process finished.",
            value=self._erasure.finished,
        )
        yield CounterMetricFamily(
            "parley_erasure_steps_postponed",
            "Erasure steps this process postponed because a service did not answer "
            "(retried a few seconds later).",
            value=self._erasure.postponed,
        )
        if self._erasures_running.value is not None:
            yield GaugeMetricFamily(
                "parley_erasures_running",
                "Account erasure jobs not finished yet (all processes; sampled every 5 s "
                "from erasures).",
                value=self._erasures_running.value,
            )


class RevocationPushMetrics(Collector):
    """The push of this region's revocations to each peer region."""

    def __init__(self, push: RevocationPush) -> None:
        self._push = push

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pushed = CounterMetricFamily(
            "parley_revocations_pushed",
            "Device revocations this process pushed to the peer region, by outcome: sent "
            "(acknowledged) or failed (the peer could not be reached or refused; retried).",
            labels=["peer", "outcome"],
        )
        backlog = GaugeMetricFamily(
            "parley_revocation_push_backlog",
            "Revocations made in this region that the peer region has not acknowledged yet "
            "(all processes; sampled every few seconds from the outbox).",
            labels=["peer"],
        )
        for peer, state in sorted(self._push.states.items()):
            pushed.add_metric([peer, "sent"], state.sent)
            pushed.add_metric([peer, "failed"], state.failed)
            if state.backlog is not None:
                backlog.add_metric([peer], state.backlog)
        yield pushed
        yield backlog
