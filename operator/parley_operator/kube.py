"""The Kubernetes API as plain dicts: the only module that talks to the API server.

kubernetes-asyncio supplies the connection (in-cluster service account or a
kubeconfig, TLS, tokens); objects travel as the same dicts the builders make.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from parley_operator.manifests import SPEC_HASH_ANNOTATION, Manifest, owned_by

__all__ = ["ApiException", "Kube", "connect"]

PLURALS: Mapping[str, str] = {
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Pod": "pods",
    "Secret": "secrets",
    "Service": "services",
}
MERGE_PATCH = "application/merge-patch+json"
# What the operator last applied, as kubectl's client-side apply keeps it: a
# field the builders stop setting is then removed, not left behind.
LAST_APPLIED_ANNOTATION = "parley.dev/last-applied"


def removals(previous: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Merge-patch nulls for the keys ``previous`` set and ``desired`` no longer does."""
    patch: dict[str, Any] = {}
    for key, old in previous.items():
        if key not in desired:
            patch[key] = None
        elif isinstance(old, Mapping) and isinstance(desired[key], Mapping):
            nested = removals(old, desired[key])
            if nested:
                patch[key] = nested
    return patch


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_last_applied(manifest: Manifest) -> Manifest:
    """The manifest carrying itself (compact JSON) in the last-applied annotation."""
    recorded = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    annotations = {**manifest["metadata"].get("annotations", {}), LAST_APPLIED_ANNOTATION: recorded}
    return {**manifest, "metadata": {**manifest["metadata"], "annotations": annotations}}


def apply_patch(live: Manifest, manifest: Manifest) -> dict[str, Any]:
    """The merge patch that brings ``live`` to ``manifest``, dropping fields no longer built."""
    recorded = (live.get("metadata", {}).get("annotations") or {}).get(LAST_APPLIED_ANNOTATION)
    previous: Mapping[str, Any] = {}
    if recorded:
        try:
            previous = json.loads(recorded)
        except ValueError:
            previous = {}
    return _overlay(removals(previous, manifest), with_last_applied(manifest))


def _collection(api_version: str, plural: str, namespace: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{quote(namespace)}/{plural}"


class Kube:
    """Namespaced get/list/create/patch of the kinds the operator manages, and delete of its own."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        result = await self._api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return cast(dict[str, Any], result)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        path = f"{_collection(api_version, PLURALS[kind], namespace)}/{quote(name)}"
        try:
            return await self._call("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str, selector: Mapping[str, str]
    ) -> list[Manifest]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        found = await self._call(
            "GET",
            _collection(api_version, PLURALS[kind], namespace),
            query=[("labelSelector", label_selector)],
        )
        items = found.get("items") or []
        # The server filters already; filtering again keeps the caller safe
        # from a server (or a fake one) that ignores the selector.
        return [
            item
            for item in items
            if all(
                (item.get("metadata", {}).get("labels") or {}).get(k) == v
                for k, v in selector.items()
            )
        ]

    async def create(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        path = _collection(manifest["apiVersion"], PLURALS[manifest["kind"]], meta["namespace"])
        return await self._call("POST", path, body=manifest)

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> Manifest:
        path = f"{_collection(api_version, PLURALS[kind], namespace)}/{quote(name)}"
        return await self._call("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    async def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete the object if the owner ``owner_uid`` controls it; whether it was deleted.

        The uid precondition makes the API server refuse (409) when the object
        was replaced between the read and the delete, so only what was
        checked is ever deleted.
        """
        live = await self.get(api_version, kind, namespace, name)
        if live is None or not owned_by(live, owner_uid):
            return False
        path = f"{_collection(api_version, PLURALS[kind], namespace)}/{quote(name)}"
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": live["metadata"]["uid"]},
            # Pods go in the background, after the Deployment (its ReplicaSet owns them).
            "propagationPolicy": "Background",
        }
        try:
            await self._call("DELETE", path, body=body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False  # gone already, or replaced: the next reconcile looks again
            raise
        return True

    async def apply(self, manifest: Manifest) -> str:
        """Create the object or bring it to the manifest; 'created', 'updated' or 'unchanged'.

        Objects are compared by the spec-hash annotation the builders set, so
        fields the server defaults never count as drift; a Deployment's
        replicas (left out of the hash: the scaler moves them) are compared
        on their own.
        """
        meta = manifest["metadata"]
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        live = await self.get(api_version, kind, meta["namespace"], meta["name"])
        if live is None:
            await self.create(with_last_applied(manifest))
            return "created"
        live_meta = live.get("metadata", {})
        live_hash = (live_meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        replicas = manifest.get("spec", {}).get("replicas")
        live_replicas = live.get("spec", {}).get("replicas")
        hash_same = live_hash == meta["annotations"][SPEC_HASH_ANNOTATION]
        if hash_same and (kind != "Deployment" or replicas == live_replicas):
            return "unchanged"
        patch = apply_patch(live, manifest)
        await self.patch(api_version, kind, meta["namespace"], meta["name"], patch)
        return "updated"


async def connect(host: str | None = None) -> Kube:
    """A client for ``host`` (tests), else in-cluster, else the local kubeconfig."""
    configuration = client.Configuration()
    if host is not None:
        configuration.host = host
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    return Kube(client.ApiClient(configuration))
