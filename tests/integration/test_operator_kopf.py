"""The operator's full cycle: real kopf against a fake API server (kmock, made
consistent in tests/kube_emulator.py) on a free port, with pods' /metrics
served by local HTTP servers.

create -> objects with owner references and status; update -> Deployment
follows; load above target -> scale up, cooldown respected; load below ->
scale down to min with deletion costs; delete -> finalizer runs and goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import kopf
import pytest
import pytest_asyncio
import yaml
from kube_emulator import ConsistentEmulator

from parley_operator.handlers import FINALIZER, OperatorOptions, register

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]
NS = "parley"
REGIONS = "parley.dev/v1alpha1/parleyregions"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
PDBS = "policy/v1/poddisruptionbudgets"
CONFIGMAPS = "v1/configmaps"
PODS = "v1/pods"
SECRETS = "v1/secrets"
STREAMS = "parley_delivery_streams_open"


def _declare(emulator: ConsistentEmulator) -> None:
    info = kmock.ResourceInfo
    emulator.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False)
    emulator.resources[REGIONS] = info(
        kind="ParleyRegion",
        namespaced=True,
        subresources={"status"},
        verbs={"list", "watch", "get", "patch", "create", "delete"},
    )
    for resource, kind in (
        (DEPLOYMENTS, "Deployment"),
        (SERVICES, "Service"),
        (PDBS, "PodDisruptionBudget"),
        (CONFIGMAPS, "ConfigMap"),
        (PODS, "Pod"),
        (SECRETS, "Secret"),
    ):
        emulator.resources[resource] = info(kind=kind, namespaced=True)


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[tuple[ConsistentEmulator, str]]:
    async with ConsistentEmulator() as emulator, kmock.Server(emulator) as server:
        _declare(emulator)
        await emulator.put("v1/namespaces", {"metadata": {"name": NS}})
        yield emulator, str(server.url).rstrip("/")


@contextlib.asynccontextmanager
async def operator(url: str, **overrides: Any) -> AsyncIterator[None]:
    options = OperatorOptions(
        kube_host=url,
        scale_interval_seconds=overrides.pop("scale_interval_seconds", 0.25),
        scrape_timeout_seconds=1.0,
        retry_delay_seconds=overrides.pop("retry_delay_seconds", 0.5),
    )
    registry = kopf.OperatorRegistry()
    register(registry, options)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.posting.enabled = False
    settings.watching.reconnect_backoff = 0.1
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            namespaces=[NS],
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        # kopf put its SIGINT/SIGTERM handlers on the session's loop and leaves
        # them there; without this, Ctrl+C would no longer stop the test run.
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)


async def eventually(check: Callable[[], Any], timeout: float = 8.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def _region_resource(**services: Any) -> dict[str, Any]:
    resource: dict[str, Any] = yaml.safe_load(
        (ROOT / "operator" / "examples" / "region-eu-west.yaml").read_text()
    )
    resource["metadata"]["namespace"] = NS
    resource["spec"]["services"].update(services)
    return resource


async def _secrets(emulator: ConsistentEmulator, *names: str) -> None:
    for name in names or ("parley-mongo", "parley-redis", "parley-token-keys"):
        await emulator.put(SECRETS, {"metadata": {"name": name, "namespace": NS}, "data": {}})


def _with_media(resource: dict[str, Any]) -> dict[str, Any]:
    """The region with svc_media on: the service token, operator tokens, S3 keys."""
    resource["spec"]["auth"] = {
        "serviceTokenSecretRef": {"name": "parley-service-token", "key": "token"},
        "operatorTokensSecretRef": {"name": "parley-operator-tokens", "key": "tokens"},
    }
    resource["spec"]["media"] = {"enabled": True, "quotas": {"storedBytes": 1 << 30}}
    return resource


def _status(emulator: ConsistentEmulator) -> dict[str, Any]:
    region = emulator.get(REGIONS, NS, "eu-west") or {}
    status: dict[str, Any] = region.get("status") or {}
    return status


def _replicas(emulator: ConsistentEmulator, service: str) -> int | None:
    found = emulator.get(DEPLOYMENTS, NS, f"eu-west-{service}")
    return None if found is None else int(found["spec"]["replicas"])


async def test_create_update_and_delete_a_region(api: tuple[ConsistentEmulator, str]) -> None:
    emulator, url = api
    await _secrets(emulator)
    async with operator(url):
        region = await emulator.put(REGIONS, _region_resource())
        uid = region["metadata"]["uid"]
        await eventually(lambda: _status(emulator).get("observedGeneration") == 1, what="status")

        expected = [f"eu-west-{s}" for s in ("keys", "message", "presence")]
        for resource in (DEPLOYMENTS, SERVICES, PDBS):
            assert emulator.names(resource, NS) == expected
        assert emulator.names(CONFIGMAPS, NS) == ["eu-west-config", "eu-west-topology"]
        for resource in (DEPLOYMENTS, SERVICES, PDBS, CONFIGMAPS):
            for name in emulator.names(resource, NS):
                owners = (emulator.get(resource, NS, name) or {})["metadata"]["ownerReferences"]
                assert [(o["kind"], o["uid"], o["controller"]) for o in owners] == [
                    ("ParleyRegion", uid, True)
                ]
        stored = emulator.get(REGIONS, NS, "eu-west") or {}
        assert FINALIZER in stored["metadata"]["finalizers"]
        status = _status(emulator)
        # No pod is ready yet: applied, but not available.
        assert status["phase"] == "Progressing"
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Reconciled"]["status"] == "True"
        assert conditions["Available"]["status"] == "False"
        assert _replicas(emulator, "message") == 3

        # The Deployment controller's part: pods become ready.
        for name in expected:
            replicas = (emulator.get(DEPLOYMENTS, NS, name) or {})["spec"]["replicas"]
            await emulator.merge(DEPLOYMENTS, NS, name, {"status": {"readyReplicas": replicas}})
        await eventually(lambda: _status(emulator).get("phase") == "Ready", what="Ready")
        assert _status(emulator)["services"]["message"] == {"replicas": 3, "readyReplicas": 3}

        # Update: more message pods at least, and a new image.
        await emulator.merge(
            REGIONS,
            NS,
            "eu-west",
            {
                "spec": {
                    "services": {"message": {"minReplicas": 5, "resources": {"limits": None}}},
                    "image": {"tag": "0.2.0"},
                }
            },
        )
        await eventually(lambda: _replicas(emulator, "message") == 5, what="5 message pods")
        await eventually(lambda: _status(emulator).get("observedGeneration") == 2)
        message = emulator.get(DEPLOYMENTS, NS, "eu-west-message") or {}
        container = message["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "ghcr.io/parley-chat/parley:0.2.0"
        # The limit the spec dropped is gone from the pod template.
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}}
        # 3 of 5 ready now: no longer Ready.
        await eventually(lambda: _status(emulator).get("phase") == "Progressing")

        # Delete: the finalizer's handler runs, then the finalizer goes and so does the region;
        # the garbage collector takes what it owned.
        await emulator.remove(REGIONS, NS, "eu-west")
        await eventually(lambda: emulator.get(REGIONS, NS, "eu-west") is None, what="deletion")
        history = emulator.objects[kmock.resource(REGIONS), NS, "eu-west"].history
        phases = [((v or {}).get("status") or {}).get("phase") for v in history.raw]
        assert "Deleting" in phases
        assert emulator.names(DEPLOYMENTS, NS) == []


async def test_media_is_run_when_enabled_and_retired_when_turned_off(
    api: tuple[ConsistentEmulator, str],
) -> None:
    emulator, url = api
    await _secrets(emulator)
    await _secrets(emulator, "parley-service-token", "parley-s3")
    core = [f"eu-west-{s}" for s in ("keys", "message", "presence")]
    with_media = sorted([*core, "eu-west-media"])
    async with operator(url, retry_delay_seconds=0.3):
        await emulator.put(REGIONS, _with_media(_region_resource()))

        def reconciled() -> dict[str, Any]:
            return {c["type"]: c for c in _status(emulator).get("conditions", [])}.get(
                "Reconciled", {}
            )

        # svc_media mounts the operator tokens: nothing is built until they exist.
        await eventually(lambda: reconciled().get("reason") == "SecretsMissing")
        assert "parley-operator-tokens" in reconciled()["message"]
        await _secrets(emulator, "parley-operator-tokens")
        await eventually(lambda: _status(emulator).get("observedGeneration") == 1, what="status")
        for resource in (DEPLOYMENTS, SERVICES, PDBS):
            assert emulator.names(resource, NS) == with_media
        config = (emulator.get(CONFIGMAPS, NS, "eu-west-config") or {})["data"]
        assert yaml.safe_load(config["message.yaml"])["message"]["media_target"] == (
            "eu-west-media.parley.svc.cluster.local:7104"
        )
        topology = (emulator.get(CONFIGMAPS, NS, "eu-west-topology") or {})["data"]
        services = json.loads(topology["topology.json"])["routing"]["services"]
        assert services["media"] == "eu-west-media.parley.svc.cluster.local:7104"
        assert _status(emulator)["services"]["media"] == {"replicas": 2, "readyReplicas": 0}

        # Off: what the operator made for media goes, and so does its status.
        await emulator.merge(REGIONS, NS, "eu-west", {"spec": {"media": {"enabled": False}}})
        await eventually(lambda: emulator.names(DEPLOYMENTS, NS) == core, what="media retired")
        await eventually(lambda: _status(emulator).get("observedGeneration") == 2)
        for resource in (SERVICES, PDBS):
            assert emulator.names(resource, NS) == core
        config = (emulator.get(CONFIGMAPS, NS, "eu-west-config") or {})["data"]
        assert "media.yaml" not in config
        assert "media_target" not in yaml.safe_load(config["message.yaml"])["message"]
        assert "media" not in _status(emulator)["services"]

        # On again: it comes back.
        await emulator.merge(REGIONS, NS, "eu-west", {"spec": {"media": {"enabled": True}}})
        await eventually(lambda: emulator.names(DEPLOYMENTS, NS) == with_media, what="media")


class FakePods:
    """Pods of eu-west-message whose /metrics report a settable delivery-stream count."""

    def __init__(self, emulator: ConsistentEmulator) -> None:
        self.emulator = emulator
        self.loads: dict[str, float] = {}
        self._runners: list[aiohttp.web.AppRunner] = []

    async def add(self, name: str, streams: float) -> None:
        self.loads[name] = streams

        async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
            text = f"# TYPE {STREAMS} gauge\n{STREAMS} {self.loads[name]}\n"
            return aiohttp.web.Response(text=text, content_type="text/plain")

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics)
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        labels = {
            "app.kubernetes.io/name": "parley",
            "app.kubernetes.io/instance": "eu-west",
            "app.kubernetes.io/component": "message",
        }
        await self.emulator.put(
            PODS,
            {
                "metadata": {"name": name, "namespace": NS, "labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "message",
                            "image": "parley",
                            "ports": [{"name": "metrics", "containerPort": port}],
                        }
                    ]
                },
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            },
        )

    def cost(self, name: str) -> str | None:
        pod = self.emulator.get(PODS, NS, name) or {}
        annotations = pod.get("metadata", {}).get("annotations") or {}
        return annotations.get("controller.kubernetes.io/pod-deletion-cost")

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def pods(api: tuple[ConsistentEmulator, str]) -> AsyncIterator[FakePods]:
    fake = FakePods(api[0])
    yield fake
    await fake.close()


def _replica_history(emulator: ConsistentEmulator) -> list[int]:
    key = (kmock.resource(DEPLOYMENTS), NS, "eu-west-message")
    if key not in emulator.objects:
        return []
    history = emulator.objects[key].history
    values: list[int] = []
    for version in history.raw:
        if version is not None and (not values or values[-1] != version["spec"]["replicas"]):
            values.append(version["spec"]["replicas"])
    return values


async def test_scales_by_load_with_cooldowns_and_least_loaded_pods_first(
    api: tuple[ConsistentEmulator, str], pods: FakePods
) -> None:
    emulator, url = api
    await _secrets(emulator)
    scaling = {
        "targets": [{"metric": STREAMS, "type": "Gauge", "perPod": 100}],
        "scaleUpCooldownSeconds": 2,
        "scaleDownCooldownSeconds": 1,
        "scaleDownMaxStep": 1,
    }
    resource = _region_resource(message={"minReplicas": 2, "maxReplicas": 6, "scaling": scaling})
    await pods.add("eu-west-message-a", 150)
    await pods.add("eu-west-message-b", 150)
    async with operator(url):
        await emulator.put(REGIONS, resource)
        # 300 streams at 100 per pod: 3 pods, at once (nothing scaled it before).
        await eventually(lambda: _replica_history(emulator)[-1:] == [3], what="3 pods")
        scaled_up_at = time.monotonic()
        status = await eventually(
            lambda: (
                _status(emulator)["services"]["message"].get("lastScaleReason")
                and _status(emulator)["services"]["message"]
            )
        )
        assert status["load"] == {STREAMS: 300.0}
        assert "parley_delivery_streams_open=300.0" in status["lastScaleReason"]

        # 1200 streams want 12 pods, capped at 6, but not before the 2 s cooldown.
        await pods.add("eu-west-message-c", 400)
        pods.loads.update({"eu-west-message-a": 400, "eu-west-message-b": 400})
        await eventually(
            lambda: _status(emulator)["services"]["message"]["load"] == {STREAMS: 1200.0}
        )
        assert _replicas(emulator, "message") == 3
        await eventually(lambda: _replicas(emulator, "message") == 6, timeout=6, what="6 pods")
        assert time.monotonic() - scaled_up_at >= 1.9

        # Load falls: one pod at a time, 1 s apart, down to min and no further;
        # the least loaded pods are marked cheapest to delete first.
        pods.loads.update(
            {"eu-west-message-a": 5, "eu-west-message-b": 50, "eu-west-message-c": 20}
        )
        await eventually(lambda: _replicas(emulator, "message") == 2, timeout=10, what="min")
        assert [
            pods.cost(n) for n in ("eu-west-message-a", "eu-west-message-b", "eu-west-message-c")
        ] == ["5", "50", "20"]
        await asyncio.sleep(1.5)
        assert _replicas(emulator, "message") == 2
        assert _replica_history(emulator) == [2, 3, 6, 5, 4, 3, 2]
        keys = emulator.get(DEPLOYMENTS, NS, "eu-west-keys") or {}
        # Keys pods expose nothing here: no readings, no scaling.
        assert keys["spec"]["replicas"] == 2


async def test_missing_secrets_are_waited_for_not_slept_on(
    api: tuple[ConsistentEmulator, str],
) -> None:
    emulator, url = api
    async with operator(url, retry_delay_seconds=0.3):
        await emulator.put(REGIONS, _region_resource())

        def reconciled() -> dict[str, Any]:
            return {c["type"]: c for c in _status(emulator).get("conditions", [])}.get(
                "Reconciled", {}
            )

        await eventually(lambda: reconciled().get("reason") == "SecretsMissing")
        assert "parley-mongo" in reconciled()["message"]
        assert _status(emulator)["phase"] == "Progressing"
        # Several retries find them still missing (each retry must still come).
        await asyncio.sleep(1.2)
        assert emulator.names(DEPLOYMENTS, NS) == []
        region = emulator.get(REGIONS, NS, "eu-west") or {}
        progress = json.loads(region["metadata"]["annotations"]["parley.dev/reconcile"])
        assert progress["retries"] >= 2
        await _secrets(emulator)
        await eventually(lambda: reconciled().get("status") == "True", what="retry")
        assert len(emulator.names(DEPLOYMENTS, NS)) == 3


async def test_a_spec_the_schema_cannot_catch_fails_until_fixed(
    api: tuple[ConsistentEmulator, str],
) -> None:
    emulator, url = api
    await _secrets(emulator)
    resource = _region_resource()
    resource["spec"]["residency"]["replicateTo"] = ["mars"]
    async with operator(url):
        await emulator.put(REGIONS, resource)
        await eventually(lambda: _status(emulator).get("phase") == "Failed")
        conditions = {c["type"]: c for c in _status(emulator)["conditions"]}
        assert conditions["Reconciled"]["reason"] == "InvalidSpec"
        assert "mars" in conditions["Reconciled"]["message"]
        assert _status(emulator)["observedGeneration"] == 1
        await asyncio.sleep(0.5)
        assert emulator.names(DEPLOYMENTS, NS) == []
        await emulator.merge(
            REGIONS, NS, "eu-west", {"spec": {"residency": {"replicateTo": ["us-east"]}}}
        )
        await eventually(lambda: _status(emulator).get("observedGeneration") == 2)
        assert _status(emulator)["phase"] == "Progressing"
        assert len(emulator.names(DEPLOYMENTS, NS)) == 3


async def test_emulator_keeps_versions_refuses_failed_tests_resumes_watches_checks_deletes(
    api: tuple[ConsistentEmulator, str],
) -> None:
    emulator, url = api
    created = await emulator.put(CONFIGMAPS, {"metadata": {"name": "c", "namespace": NS}})
    version = created["metadata"]["resourceVersion"]
    path = f"/api/v1/namespaces/{NS}/configmaps/c"
    async with aiohttp.ClientSession(url) as http:
        stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}]
        headers = {"Content-Type": "application/json-patch+json"}
        async with http.patch(path, json=stale, headers=headers) as response:
            assert response.status == 422
        fresh = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/data", "value": {"k": "v"}},
        ]
        async with http.patch(path, json=fresh, headers=headers) as response:
            assert response.status == 200
            patched = await response.json()
        assert int(patched["metadata"]["resourceVersion"]) > int(version)
        # A watch from the first version sees only what came after it.
        params = {"watch": "true", "resourceVersion": version}
        async with http.get(f"/api/v1/namespaces/{NS}/configmaps", params=params) as response:
            line = await asyncio.wait_for(response.content.readline(), 2)
        event = json.loads(line)
        assert event["type"] == "MODIFIED"
        assert event["object"]["data"] == {"k": "v"}
        # A delete whose uid precondition no longer holds is refused.
        other = {"preconditions": {"uid": "not-this-one"}}
        async with http.delete(path, json=other) as response:
            assert response.status == 409
        assert emulator.get(CONFIGMAPS, NS, "c") is not None
        same = {"preconditions": {"uid": created["metadata"]["uid"]}}
        async with http.delete(path, json=same) as response:
            assert response.status == 200
        assert emulator.get(CONFIGMAPS, NS, "c") is None


async def test_the_container_entry_point_logs_in_with_a_kubeconfig_and_serves_liveness(
    api: tuple[ConsistentEmulator, str], tmp_path: Path
) -> None:
    emulator, url = api
    await _secrets(emulator)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "operator"}}],
        "current-context": "fake",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "PARLEY_OPERATOR_NAMESPACES": NS,
        "PARLEY_OPERATOR_LIVENESS": f"http://127.0.0.1:{port}/healthz",
    }
    log = (tmp_path / "operator.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley_operator", env=env, stdout=log, stderr=log
    )
    try:
        await emulator.put(REGIONS, _region_resource())
        await eventually(
            lambda: len(emulator.names(DEPLOYMENTS, NS)) == 3, timeout=15, what="deployments"
        )
        health = f"http://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(health) as response:
            assert response.status == 200
            assert "regions_scaled" in await response.json()
    finally:
        started = time.monotonic()
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()
    # kopf exits on SIGTERM without waiting out a timer (the scale timer's
    # interval is 15 s) or a watch. Seen taking 7 s with the whole suite on
    # two cores, so the bound is below the timer, not a tight one.
    assert process.returncode == 0
    assert time.monotonic() - started < 9
