"""Load-based scaling: pure functions of readings, bounds, cooldowns and ``now``.

Each service names its load signals in the spec (``ScalingTarget``): a gauge
(open delivery streams) is a load as read; a counter (RPCs, committed
messages) becomes a per-second rate between two scrapes of the same pod. The
replica count is the total load over ``perPod``, the highest over targets,
within min/max; cooldowns since the last scaling (kept in an annotation on
the Deployment) stop flapping, and a scale-down removes at most
``scale_down_max_step`` pods, the least loaded first (pod-deletion-cost).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from parley_operator.spec import ScalingPolicy, ScalingTarget

INT32_MAX = 2**31 - 1

# One pod's load per target metric; None when the pod could not be read.
PodLoad = Mapping[str, float] | None


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    reason: str
    # Per target metric, the load summed over pods (unread pods estimated).
    load: Mapping[str, float] = field(default_factory=dict)


def _total_loads(policy: ScalingPolicy, loads: Sequence[PodLoad]) -> dict[str, float]:
    known = [load for load in loads if load is not None]
    # Unread pods are taken to carry the average of the others.
    scale = len(loads) / len(known)
    return {
        target.metric: sum(load.get(target.metric, 0.0) for load in known) * scale
        for target in policy.targets
    }


def _wanted(policy: ScalingPolicy, current: int, totals: Mapping[str, float]) -> int:
    wanted = policy.min_replicas
    for target in policy.targets:
        total = totals[target.metric]
        ratio = total / (target.per_pod * current)
        if abs(ratio - 1.0) <= policy.tolerance:
            wanted = max(wanted, current)
        else:
            wanted = max(wanted, math.ceil(total / target.per_pod))
    return min(policy.max_replicas, wanted)


def decide_replicas(
    *,
    current: int,
    policy: ScalingPolicy,
    loads: Sequence[PodLoad],
    last_scaled_at: datetime | None,
    now: datetime,
) -> ScalingDecision:
    """How many replicas a service should have now."""
    bounded = max(policy.min_replicas, min(policy.max_replicas, current))
    if bounded != current:
        return ScalingDecision(bounded, f"outside {policy.min_replicas}..{policy.max_replicas}")
    if not policy.enabled:
        return ScalingDecision(current, "scaling disabled")
    if not any(load is not None for load in loads):
        return ScalingDecision(current, "no load readings")
    totals = _total_loads(policy, loads)
    wanted = _wanted(policy, current, totals)
    since = None if last_scaled_at is None else (now - last_scaled_at).total_seconds()
    if wanted > current:
        if since is not None and since < policy.scale_up_cooldown_seconds:
            return ScalingDecision(current, f"scale-up to {wanted} waits for cooldown", totals)
        return ScalingDecision(wanted, f"load {_describe(policy, totals)}", totals)
    if wanted < current:
        if any(load is None for load in loads):
            # Removing a pod on a guess could overload the rest.
            return ScalingDecision(current, "scale-down needs every pod's readings", totals)
        if since is not None and since < policy.scale_down_cooldown_seconds:
            return ScalingDecision(current, f"scale-down to {wanted} waits for cooldown", totals)
        target = max(wanted, current - policy.scale_down_max_step)
        return ScalingDecision(target, f"load {_describe(policy, totals)}", totals)
    return ScalingDecision(current, "on target", totals)


def _describe(policy: ScalingPolicy, totals: Mapping[str, float]) -> str:
    return ", ".join(
        f"{t.metric}={totals[t.metric]:.1f} (per pod {t.per_pod:g})" for t in policy.targets
    )


def read_metrics(text: str, targets: Iterable[ScalingTarget]) -> dict[str, float]:
    """Each target's sample values summed, from a Prometheus text exposition.

    Raises ValueError on text that is not an exposition.
    """
    wanted = list(targets)
    sums = dict.fromkeys((t.metric for t in wanted), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for target in wanted:
                if sample.name == target.metric and all(
                    sample.labels.get(key) == value for key, value in target.labels.items()
                ):
                    sums[target.metric] += sample.value
    return sums


@dataclass
class RateTracker:
    """Turns counter readings into per-second rates between scrapes of the same pod."""

    _previous: dict[str, tuple[float, Mapping[str, float]]] = field(default_factory=dict)

    def load(
        self, pod: str, readings: Mapping[str, float], targets: Sequence[ScalingTarget], at: float
    ) -> PodLoad:
        """The pod's load per target, or None until a rate can be computed."""
        previous = self._previous.get(pod)
        self._previous[pod] = (at, readings)
        load: dict[str, float] = {}
        for target in targets:
            value = readings.get(target.metric, 0.0)
            if target.kind == "Gauge":
                load[target.metric] = value
                continue
            if previous is None or at <= previous[0]:
                return None
            before = previous[1].get(target.metric, 0.0)
            if value < before:
                return None  # the process restarted: its counters began again
            load[target.metric] = (value - before) / (at - previous[0])
        return load

    def forget_except(self, pods: Iterable[str]) -> None:
        keep = set(pods)
        for pod in [p for p in self._previous if p not in keep]:
            del self._previous[pod]


def deletion_costs(pod_loads: Mapping[str, PodLoad], target: ScalingTarget) -> dict[str, int]:
    """pod-deletion-cost per pod: its load, so the ReplicaSet removes the least loaded first.

    An unread pod costs the most: it may be busy, and removing it is a guess.
    """
    costs: dict[str, int] = {}
    for pod, load in pod_loads.items():
        if load is None:
            costs[pod] = INT32_MAX
        else:
            costs[pod] = max(0, min(INT32_MAX, round(load.get(target.metric, 0.0))))
    return costs


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
