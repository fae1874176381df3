"""kopf handlers: thin glue between ParleyRegion events and the pure builders.

``register`` adds every handler to a kopf registry (the default one for
``kopf run``, a fresh one per test), so nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf

from parley_operator import GROUP, REGION_PLURAL, VERSION
from parley_operator.kube import ApiException, Kube, connect
from parley_operator.manifests import (
    DELETION_COST_ANNOTATION,
    LAST_SCALE_ANNOTATION,
    Owner,
    deployment_name,
    region_manifests,
    retired,
    selector_labels,
)
from parley_operator.scaling import (
    RateTracker,
    decide_replicas,
    deletion_costs,
    parse_time,
    read_metrics,
)
from parley_operator.spec import (
    METRICS_PORTS,
    RegionSpec,
    ServiceSpec,
    SpecError,
    parse_region,
)
from parley_operator.status import (
    AVAILABLE,
    RECONCILED,
    ServiceReadiness,
    availability,
    set_condition,
    status_changes,
    timestamp,
)

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter[Any]
FINALIZER = "parley.dev/finalizer"


@dataclass(frozen=True)
class OperatorOptions:
    # None: in-cluster service account, else the local kubeconfig.
    kube_host: str | None = None
    # How often each region's load is read and its status refreshed.
    scale_interval_seconds: float = 15.0
    scrape_timeout_seconds: float = 3.0
    # Retry delay when something the region needs (a Secret, the API) is missing.
    retry_delay_seconds: float = 20.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorOptions:
        env = os.environ if environ is None else environ
        return cls(
            scale_interval_seconds=float(env.get("PARLEY_OPERATOR_SCALE_INTERVAL", "15")),
            scrape_timeout_seconds=float(env.get("PARLEY_OPERATOR_SCRAPE_TIMEOUT", "3")),
            retry_delay_seconds=float(env.get("PARLEY_OPERATOR_RETRY_DELAY", "20")),
        )


@dataclass
class OperatorState:
    """What lives for the operator's lifetime: the API client and counter readings."""

    kube: Kube | None = None
    rates: dict[tuple[str, str], RateTracker] = field(default_factory=dict)
    # Timer runs in progress: kopf leaves a timer that is mid-run at exit
    # orphaned, so cleanup cancels them before closing the client they use.
    scaling: set[asyncio.Task[Any]] = field(default_factory=set)
    # Reconcile and the scaler both write a Deployment's replicas: per region,
    # one at a time, so a reconcile never writes back a count read before a scaling.
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def api(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("the Kubernetes client is not connected yet", delay=1)
        return self.kube


def configure(settings: kopf.OperatorSettings) -> None:
    # The chart installs the CRD before the operator, so kopf need not watch
    # CRDs and namespaces for it to appear (nor be allowed to).
    settings.scanning.disabled = True
    settings.persistence.finalizer = FINALIZER
    # Handler progress and the diff base live in annotations, so the status
    # holds only what the CRD's status schema declares.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # A region being deleted waits for its scaling timer to finish its run;
    # kopf looks again only after this long (60 s by default).
    settings.background.cancellation_polling = 1.0


def _owner(meta: Mapping[str, Any]) -> Owner:
    return Owner(name=str(meta["name"]), uid=str(meta["uid"]))


def _parse(name: str, namespace: str | None, spec: Mapping[str, Any]) -> RegionSpec:
    if namespace is None:
        raise SpecError("a ParleyRegion is namespaced")
    return parse_region(name, namespace, spec)


def _mounted_secrets(region: RegionSpec) -> set[str]:
    """Every Secret some pod of the region mounts."""
    names = {region.mongo_uri.name, region.redis_url.name, region.tokens.secret_name}
    if region.auth.service_token is not None:
        names.add(region.auth.service_token.name)
    if "media" in region.services:
        if region.auth.operator_tokens is not None:
            names.add(region.auth.operator_tokens.name)
        if region.s3 is not None and region.s3.credentials is not None:
            names.add(region.s3.credentials.secret_name)
    return names


async def _missing_secrets(kube: Kube, region: RegionSpec) -> list[str]:
    wanted = sorted(_mounted_secrets(region))
    found = await asyncio.gather(*(kube.get("v1", "Secret", region.namespace, n) for n in wanted))
    return [name for name, secret in zip(wanted, found, strict=True) if secret is None]


async def _readiness(kube: Kube, region: RegionSpec) -> dict[str, ServiceReadiness]:
    deployments = await asyncio.gather(
        *(
            kube.get("apps/v1", "Deployment", region.namespace, deployment_name(region, svc))
            for svc in region.services
        )
    )
    readiness = {}
    for svc, found in zip(region.services, deployments, strict=True):
        if found is not None:
            readiness[svc] = ServiceReadiness(
                replicas=int(found.get("spec", {}).get("replicas") or 0),
                ready=int((found.get("status") or {}).get("readyReplicas") or 0),
            )
    return readiness


def _write_status(
    patch: kopf.Patch,
    status: Mapping[str, Any],
    *,
    generation: int,
    conditions: list[dict[str, Any]],
    readiness: Mapping[str, ServiceReadiness],
    observed: bool,
    service_updates: Mapping[str, Mapping[str, Any]] | None = None,
    running: Iterable[str] | None = None,
) -> None:
    changes = status_changes(
        status,
        generation=generation,
        conditions=conditions,
        readiness=readiness,
        observed=observed,
        service_updates=service_updates,
        running=running,
    )
    for key, value in changes.items():
        patch.status[key] = value


def register(registry: kopf.OperatorRegistry, options: OperatorOptions) -> None:
    """Add the operator's handlers to ``registry``."""
    state = OperatorState()
    resource = (GROUP, VERSION, REGION_PLURAL)

    @kopf.on.startup(id="connect", registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        state.kube = await connect(options.kube_host)

    @kopf.on.cleanup(id="disconnect", registry=registry)
    async def stop(**_: Any) -> None:
        for task in state.scaling:
            task.cancel()
        await asyncio.gather(*state.scaling, return_exceptions=True)
        if state.kube is not None:
            await state.kube.close()
            state.kube = None

    @kopf.on.probe(id="regions_scaled", registry=registry)
    def regions_scaled(**_: Any) -> int:
        return len({region for region, _ in state.rates})

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", registry=registry)
    async def reconcile(
        name: str,
        namespace: str | None,
        meta: Mapping[str, Any],
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        logger: Logger,
        **_: Any,
    ) -> None:
        """Bring the region's objects to the spec and report how it went in the status."""
        kube = state.api()
        generation = int(meta.get("generation") or 0)
        now = options.clock()
        conditions = list(status.get("conditions") or [])

        def fail(reason: str, message: str) -> None:
            updated = set_condition(
                conditions,
                kind=RECONCILED,
                status=False,
                reason=reason,
                message=message,
                generation=generation,
                now=now,
            )
            _write_status(
                patch,
                status,
                generation=generation,
                conditions=updated,
                readiness={},
                # An invalid spec is fully handled for this generation; the
                # other failures are retried, so it is not observed yet.
                observed=reason == "InvalidSpec",
            )

        try:
            region = _parse(name, namespace, spec)
        except SpecError as exc:
            fail("InvalidSpec", str(exc))
            raise kopf.PermanentError(str(exc)) from None
        try:
            missing = await _missing_secrets(kube, region)
            if missing:
                fail("SecretsMissing", f"waiting for Secrets: {', '.join(missing)}")
                raise kopf.TemporaryError(
                    f"Secrets missing: {missing}", delay=options.retry_delay_seconds
                )
            async with state.lock(str(meta["uid"])):
                current = await _readiness(kube, region)
                manifests = region_manifests(
                    region,
                    _owner(meta),
                    generation=generation,
                    replicas={svc: seen.replicas for svc, seen in current.items()},
                )
                outcomes = [await kube.apply(manifest) for manifest in manifests]
                # A service the spec turned off (media) goes: the operator made it.
                for api_version, kind, object_name in retired(region):
                    removed = await kube.delete_owned(
                        api_version, kind, region.namespace, object_name, str(meta["uid"])
                    )
                    outcomes.append("deleted" if removed else "unchanged")
                readiness = await _readiness(kube, region)
        except ApiException as exc:
            fail("ApiError", f"Kubernetes API: {exc.status} {exc.reason}")
            raise kopf.TemporaryError(
                f"Kubernetes API error {exc.status}", delay=options.retry_delay_seconds
            ) from exc
        changed = sum(outcome != "unchanged" for outcome in outcomes)
        logger.info(f"reconciled generation {generation}: {changed} objects changed")
        updated = set_condition(
            conditions,
            kind=RECONCILED,
            status=True,
            reason="Applied",
            message=f"{len(manifests)} objects match generation {generation}",
            generation=generation,
            now=now,
        )
        ready, detail = availability(readiness)
        updated = set_condition(
            updated,
            kind=AVAILABLE,
            status=ready,
            reason="AllPodsReady" if ready else "PodsNotReady",
            message=detail,
            generation=generation,
            now=now,
        )
        _write_status(
            patch,
            status,
            generation=generation,
            conditions=updated,
            readiness=readiness,
            observed=True,
            running=region.services,
        )

    @kopf.on.delete(*resource, id="delete", registry=registry)
    async def delete(
        uid: str,
        name: str,
        status: Mapping[str, Any],
        patch: kopf.Patch,
        logger: Logger,
        **_: Any,
    ) -> None:
        """Owner references take the objects away; this drops what the scaler remembers."""
        for key in [key for key in state.rates if key[0] == uid]:
            del state.rates[key]
        state.locks.pop(uid, None)
        if status.get("phase") != "Deleting":
            patch.status["phase"] = "Deleting"
        logger.info(f"region {name} deleted; its objects go with it (owner references)")

    @kopf.timer(*resource, id="scale", interval=options.scale_interval_seconds, registry=registry)
    async def observe_and_scale(
        name: str,
        namespace: str | None,
        uid: str,
        meta: Mapping[str, Any],
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        logger: Logger,
        **kwargs: Any,
    ) -> None:
        """Read every pod's load, scale each service, refresh readiness in the status."""
        # kopf passes timers a `stopped` flag its TimerFn protocol does not declare.
        stopped = kwargs.get("stopped")
        try:
            region = _parse(name, namespace, spec)
        except SpecError:
            return  # reconcile reported it; nothing runs to scale
        conditions = list(status.get("conditions") or [])
        if not any(c.get("type") == RECONCILED and c.get("status") == "True" for c in conditions):
            return
        kube = state.api()
        now = options.clock()
        task = asyncio.current_task()
        if task is not None:
            state.scaling.add(task)
        updates: dict[str, dict[str, Any]] = {}
        try:
            for svc in region.services:
                if stopped:
                    return  # the region is being deleted or the operator is exiting
                async with state.lock(uid):
                    updates[svc] = await _scale_service(
                        kube, state, options, region, uid, svc, logger, now
                    )
            readiness = await _readiness(kube, region)
        except ApiException as exc:
            raise kopf.TemporaryError(
                f"Kubernetes API error {exc.status}", delay=options.retry_delay_seconds
            ) from exc
        finally:
            state.scaling.discard(task)
        ready, detail = availability(readiness)
        updated = set_condition(
            conditions,
            kind=AVAILABLE,
            status=ready,
            reason="AllPodsReady" if ready else "PodsNotReady",
            message=detail,
            generation=int(status.get("observedGeneration") or 0),
            now=now,
        )
        _write_status(
            patch,
            status,
            generation=int(meta.get("generation") or 0),
            conditions=updated,
            readiness=readiness,
            observed=False,
            service_updates=updates,
            running=region.services,
        )


async def _scale_service(
    kube: Kube,
    state: OperatorState,
    options: OperatorOptions,
    region: RegionSpec,
    uid: str,
    svc: str,
    logger: Logger,
    now: datetime,
) -> dict[str, Any]:
    """Scale one service if its load says so; returns its status fields to update."""
    spec = region.services[svc]
    name = deployment_name(region, svc)
    deployment = await kube.get("apps/v1", "Deployment", region.namespace, name)
    if deployment is None:
        return {}
    current = int(deployment.get("spec", {}).get("replicas") or 0)
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    pods = [
        pod
        for pod in await kube.list("v1", "Pod", region.namespace, selector_labels(region, svc))
        if (pod.get("status") or {}).get("phase") == "Running"
        and not pod.get("metadata", {}).get("deletionTimestamp")
    ]
    tracker = state.rates.setdefault((uid, svc), RateTracker())
    tracker.forget_except(pod["metadata"]["name"] for pod in pods)
    loads = await _pod_loads(tracker, spec, svc, pods, options.scrape_timeout_seconds)
    decision = decide_replicas(
        current=current,
        policy=spec.scaling,
        loads=list(loads.values()),
        last_scaled_at=parse_time(annotations.get(LAST_SCALE_ANNOTATION)),
        now=now,
    )
    service_status: dict[str, Any] = {}
    if decision.load:
        service_status["load"] = {k: round(v, 3) for k, v in decision.load.items()}
    if decision.replicas == current:
        return service_status
    if decision.replicas < current:
        # The ReplicaSet removes the pods with the lowest cost first: the least
        # loaded, so the fewest streams have to reconnect elsewhere.
        costs = deletion_costs(loads, spec.scaling.targets[0])
        for pod_name, cost in costs.items():
            await kube.patch(
                "v1",
                "Pod",
                region.namespace,
                pod_name,
                {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(cost)}}},
            )
    await kube.patch(
        "apps/v1",
        "Deployment",
        region.namespace,
        name,
        {
            "metadata": {"annotations": {LAST_SCALE_ANNOTATION: now.isoformat()}},
            "spec": {"replicas": decision.replicas},
        },
    )
    logger.info(f"scaled {svc} from {current} to {decision.replicas}: {decision.reason}")
    service_status["lastScaleTime"] = timestamp(now)
    service_status["lastScaleReason"] = decision.reason
    return service_status


async def _pod_loads(
    tracker: RateTracker,
    spec: ServiceSpec,
    svc: str,
    pods: list[dict[str, Any]],
    timeout: float,
) -> dict[str, Mapping[str, float] | None]:
    targets = spec.scaling.targets

    async def read(http: httpx.AsyncClient, pod: dict[str, Any]) -> Mapping[str, float] | None:
        url = _metrics_url(pod, METRICS_PORTS[svc])
        if url is None:
            return None
        try:
            response = await http.get(url)
            response.raise_for_status()
            readings = read_metrics(response.text, targets)
        except (httpx.HTTPError, ValueError) as exc:
            log.info("cannot read %s: %s", url, exc)
            return None
        at = asyncio.get_running_loop().time()
        return tracker.load(pod["metadata"]["name"], readings, targets, at)

    async with httpx.AsyncClient(timeout=timeout) as http:
        loads = await asyncio.gather(*(read(http, pod) for pod in pods))
    return {pod["metadata"]["name"]: load for pod, load in zip(pods, loads, strict=True)}


def _metrics_url(pod: Mapping[str, Any], default_port: int) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    port = default_port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == "metrics":
                port = int(declared["containerPort"])
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"
