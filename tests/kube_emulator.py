"""A fake Kubernetes API server for running real kopf in tests: kmock's
emulator with the consistency kopf relies on.

kmock 0.8 as shipped never sets ``resourceVersion``, answers a failed
JSON-patch ``test`` with 500, and replays every object on a watch whatever
``?resourceVersion=`` says. kopf needs all three: it JSON-patches finalizers
with a ``test`` on the resourceVersion (and retries on 422), waits for the
resourceVersion of its own patches to come back through the watch, and
watches from the version its list returned. This subclass keeps one revision
counter and one event log for all objects and serves creates, patches and
deletes itself (with uids, generations, finalizers, delete preconditions and
owner-reference garbage collection); discovery and request parsing stay kmock's.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime
import functools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import enums, rendering

Key = tuple[kmock.resource, str | None, str]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _essence(obj: Mapping[str, Any]) -> Any:
    """What moves metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _selected(obj: Mapping[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


@attrs.define(kw_only=True)
class ConsistentEmulator(kmock.KubernetesEmulator):
    _revision: int = attrs.field(default=0, init=False)
    # (revision, resource, namespace, event), in revision order.
    _log: list[tuple[int, kmock.resource, str | None, dict[str, Any]]] = attrs.field(
        factory=list, init=False
    )
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)

    # -- helpers for tests ------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def names(self, resource: str, namespace: str | None) -> list[str]:
        wanted = kmock.resource(resource)
        return sorted(
            name
            for (res, ns, name), obj in self.objects.items()
            if res == wanted and ns == namespace and not obj.deleted
        )

    async def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object directly, as another controller would."""
        async with self._lock:
            return await self._create(kmock.resource(resource), None, copy.deepcopy(obj))

    async def merge(
        self, resource: str, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Patch an object directly (e.g. a Deployment's status, as its controller would)."""
        async with self._lock:
            key = (kmock.resource(resource), namespace, name)
            return await self._patch(key, patch, json_patch=False, status_only=False)

    async def remove(self, resource: str, namespace: str | None, name: str) -> None:
        """Delete an object as kubectl would (finalizers hold it back)."""
        async with self._lock:
            await self._delete((kmock.resource(resource), namespace, name))

    # -- state changes --------------------------------------------------------------

    async def _record(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        async with self._changed:
            self._log.append((self._revision, key[0], key[1], {"type": kind, "object": obj}))
            self._changed.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self._revision += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._revision)

    async def _create(
        self, resource: kmock.resource, namespace: str | None, obj: dict[str, Any]
    ) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        namespace = namespace or meta.get("namespace")
        if namespace is not None:
            meta["namespace"] = namespace
        key: Key = (resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise kmock.KubernetesError(409, "AlreadyExists", f"{meta['name']} already exists")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._bump(obj)
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        await self._record(key, "ADDED", copy.deepcopy(obj))
        return copy.deepcopy(obj)

    async def _patch(
        self, key: Key, patch: Any, *, json_patch: bool, status_only: bool
    ) -> dict[str, Any]:
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        old = copy.deepcopy(self.objects[key].raw)
        if json_patch:
            try:
                new = jsonpatch.apply_patch(old, patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    422, "Invalid", f"the patch does not apply: {exc}"
                ) from None
        elif status_only:
            new = merge_patch(old, {"status": patch.get("status") or {}})
        else:
            new = merge_patch(old, patch)
        for immutable in ("uid", "name", "namespace", "creationTimestamp", "resourceVersion"):
            if immutable in old["metadata"]:
                new["metadata"][immutable] = old["metadata"][immutable]
        if new == old:
            return old  # a no-op patch changes nothing, not even the version
        if _essence(new) != _essence(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._bump(new)
        self.objects[key].history.append(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            await self._remove(key)
        else:
            await self._record(key, "MODIFIED", copy.deepcopy(new))
        return copy.deepcopy(new)

    def _check_preconditions(self, key: Key, options: Any) -> None:
        """DeleteOptions.preconditions: a uid or version that no longer matches is a 409."""
        wanted = (options or {}).get("preconditions") if isinstance(options, Mapping) else None
        if not wanted or key not in self.objects or self.objects[key].deleted:
            return
        meta = self.objects[key].raw.get("metadata", {})
        for field in ("uid", "resourceVersion"):
            if field in wanted and wanted[field] != meta.get(field):
                raise kmock.KubernetesError(
                    409, "Conflict", f"precondition failed: {field} is {meta.get(field)}"
                )

    async def _delete(self, key: Key) -> dict[str, Any]:
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        obj = copy.deepcopy(self.objects[key].raw)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                return await self._patch(
                    key,
                    {"metadata": {"deletionTimestamp": _now()}},
                    json_patch=False,
                    status_only=False,
                )
            return obj
        return await self._remove(key)

    async def _remove(self, key: Key) -> dict[str, Any]:
        obj = copy.deepcopy(self.objects[key].raw)
        self._bump(obj)
        self.objects[key].delete()
        await self._record(key, "DELETED", copy.deepcopy(obj))
        # The garbage collector: dependents go with their owner.
        uid = obj["metadata"].get("uid")
        for other_key, other in list(self.objects.items()):
            if other.deleted:
                continue
            owners = other.raw.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in owners):
                await self._delete(other_key)
        return obj

    # -- serving ------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            if request.action == enums.action.CREATE:
                body = await self._create(
                    request.resource, request.namespace, copy.deepcopy(request.data)
                )
                return aiohttp.web.json_response(body, status=201)
            if request.name is None:
                raise kmock.KubernetesError(405, "MethodNotAllowed", "no collection changes")
            key: Key = (request.resource, request.namespace, request.name)
            if request.action == enums.action.DELETE:
                self._check_preconditions(key, request.data)
                return aiohttp.web.json_response(await self._delete(key))
            content_type = request.headers.get("Content-Type", "")
            body = await self._patch(
                key,
                request.data,
                json_patch=content_type.startswith("application/json-patch"),
                status_only=request.subresource == "status",
            )
            return aiohttp.web.json_response(body)

    def _grown_past(self, position: int) -> bool:
        return len(self._log) > position

    def _matches(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (request.namespace is None or meta.get("namespace") == request.namespace) and (
            request.name is None or meta.get("name") == request.name
        )

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        selector = request.params.get("labelSelector")
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (resource, _, _), obj in self.objects.items()
                if resource == request.resource and not obj.deleted
                if self._matches(request, obj.raw) and _selected(obj.raw, selector)
            ]
            return {"metadata": {"resourceVersion": str(self._revision)}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        since = request.params.get("resourceVersion")
        async with self._lock:
            if since in (None, "", "0"):
                position = len(self._log)
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (resource, _, _), obj in self.objects.items()
                    if resource == request.resource and not obj.deleted
                    if self._matches(request, obj.raw)
                ]
            else:
                revisions = [entry[0] for entry in self._log]
                position = bisect.bisect_right(revisions, int(since))
                initial = []
        for event in initial:
            yield event
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._grown_past, position))
                batch = self._log[position:]
            position += len(batch)
            for _, resource, _, event in batch:
                if resource == request.resource and self._matches(request, event["object"]):
                    yield json.loads(json.dumps(event))
