"""ParleyRegion status: conditions keep their transition time, the phase
summarises them, and the handlers patch only what changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from parley_operator.status import (
    ServiceReadiness,
    availability,
    phase,
    set_condition,
    status_changes,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
READY = {"keys": ServiceReadiness(2, 2), "message": ServiceReadiness(3, 3)}
HALF = {"keys": ServiceReadiness(2, 2), "message": ServiceReadiness(3, 1)}
NONE_LEFT = {"keys": ServiceReadiness(2, 2), "message": ServiceReadiness(3, 0)}


def _reconciled(ok: bool = True, reason: str = "Applied") -> list[dict[str, Any]]:
    return set_condition(
        [], kind="Reconciled", status=ok, reason=reason, message="m", generation=1, now=T0
    )


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = _reconciled(ok=False, reason="SecretsMissing")
    later = T0 + timedelta(minutes=5)
    same = set_condition(
        first,
        kind="Reconciled",
        status=False,
        reason="ApiError",
        message="x",
        generation=2,
        now=later,
    )
    assert same[0]["lastTransitionTime"] == "2026-11-21T12:00:00Z"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("ApiError", 2)
    flipped = set_condition(
        same,
        kind="Reconciled",
        status=True,
        reason="Applied",
        message="y",
        generation=2,
        now=later,
    )
    assert flipped[0]["lastTransitionTime"] == "2026-11-21T12:05:00Z"
    both = set_condition(
        flipped,
        kind="Available",
        status=True,
        reason="AllPodsReady",
        message="z",
        generation=2,
        now=later,
    )
    assert [c["type"] for c in both] == ["Available", "Reconciled"]


def test_phase() -> None:
    assert phase([], READY, None) == "Pending"
    assert phase(_reconciled(False, "InvalidSpec"), {}, None) == "Failed"
    assert phase(_reconciled(False, "SecretsMissing"), {}, None) == "Progressing"
    assert phase(_reconciled(), READY, "Progressing") == "Ready"
    assert phase(_reconciled(), HALF, "Ready") == "Progressing"
    # A service with no pod left, after it served: degraded, not a rollout.
    assert phase(_reconciled(), NONE_LEFT, "Ready") == "Degraded"
    assert phase(_reconciled(), NONE_LEFT, "Progressing") == "Progressing"


def test_availability_names_what_is_waited_for() -> None:
    assert availability(READY) == (True, "every service has all its pods ready")
    assert availability(HALF) == (False, "pods not ready: message 1/3")


def test_status_patch_holds_only_what_changes() -> None:
    conditions = _reconciled()
    status = {
        "phase": "Ready",
        "observedGeneration": 1,
        "conditions": conditions,
        "services": {
            "keys": {"replicas": 2, "readyReplicas": 2},
            "message": {"replicas": 3, "readyReplicas": 3, "load": {"s": 1.0}},
        },
    }
    unchanged = status_changes(
        status, generation=1, conditions=conditions, readiness=READY, observed=True
    )
    assert unchanged == {}
    changed = status_changes(
        status,
        generation=1,
        conditions=conditions,
        readiness=HALF,
        observed=True,
        service_updates={"message": {"load": {"s": 7.0}}},
    )
    assert changed == {
        "phase": "Progressing",
        "services": {"message": {"replicas": 3, "readyReplicas": 1, "load": {"s": 7.0}}},
    }
