"""ParleyRegion status: conditions and phase, computed from what the operator saw."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from parley_operator.spec import SERVICES

RECONCILED = "Reconciled"
AVAILABLE = "Available"


@dataclass(frozen=True)
class ServiceReadiness:
    replicas: int
    ready: int


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions with one replaced; its transition time moves only when its status does."""
    value = "True" if status else "False"
    updated: list[dict[str, Any]] = []
    previous = None
    for condition in conditions:
        if condition.get("type") == kind:
            previous = condition
        else:
            updated.append(dict(condition))
    changed = previous is None or previous.get("status") != value
    updated.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": timestamp(now)
            if changed or previous is None
            else previous["lastTransitionTime"],
        }
    )
    return sorted(updated, key=lambda c: str(c["type"]))


def availability(services: Mapping[str, ServiceReadiness]) -> tuple[bool, str]:
    waiting = [
        f"{name} {state.ready}/{state.replicas}"
        for name, state in sorted(services.items())
        if state.ready < state.replicas
    ]
    if waiting:
        return False, "pods not ready: " + ", ".join(waiting)
    return True, "every service has all its pods ready"


def phase(
    conditions: Sequence[Mapping[str, Any]],
    services: Mapping[str, ServiceReadiness],
    previous: str | None,
) -> str:
    by_type = {c["type"]: c for c in conditions}
    reconciled = by_type.get(RECONCILED)
    if reconciled is None:
        return "Pending"
    if reconciled["status"] != "True":
        return "Failed" if reconciled["reason"] == "InvalidSpec" else "Progressing"
    if availability(services)[0]:
        return "Ready"
    if previous in ("Ready", "Degraded") and any(
        state.replicas > 0 and state.ready == 0 for state in services.values()
    ):
        # A service that served before has no pod left: worse than a rollout.
        return "Degraded"
    return "Progressing"


def status_changes(
    status: Mapping[str, Any],
    *,
    generation: int,
    conditions: list[dict[str, Any]],
    readiness: Mapping[str, ServiceReadiness],
    observed: bool,
    service_updates: Mapping[str, Mapping[str, Any]] | None = None,
    running: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The status fields that change, as a merge patch of the status.

    A patch that changes nothing produces no watch event, and kopf, having
    patched, waits for one before it sleeps towards its next retry or check:
    so unchanged fields stay out. A service not ``running`` (default: all)
    loses its entry (a null in the merge patch).
    """
    desired: dict[str, Any] = {
        "conditions": conditions,
        "phase": phase(conditions, readiness, status.get("phase")),
    }
    if observed:
        desired["observedGeneration"] = generation
    changes = {key: value for key, value in desired.items() if status.get(key) != value}
    current = status.get("services") or {}
    kept = set(SERVICES if running is None else running)
    for name in SERVICES:
        if name not in kept:
            if current.get(name) is not None:
                changes.setdefault("services", {})[name] = None
            continue
        merged = {**(current.get(name) or {}), **(service_updates or {}).get(name, {})}
        if name in readiness:
            merged.update(replicas=readiness[name].replicas, readyReplicas=readiness[name].ready)
        if merged and merged != current.get(name):
            changes.setdefault("services", {})[name] = merged
    return changes
