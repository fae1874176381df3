"""The region's media bucket on any S3-compatible store (AWS S3, MinIO, Ceph RGW,
SeaweedFS locally).

Presigned URLs are made locally (no request), against the public endpoint
clients use: they sign the host. With static keys they are signed by
``presign.Signer`` (the same URLs as botocore's, without its per-call
machinery); with an IAM role's rotating credentials, by botocore. A PUT signs its exact
Content-Length and ``x-amz-checksum-sha256``, so the store itself refuses a
body of another length (403) or another hash (400) before anything is kept;
multipart part URLs do the same per part.

Every call that reaches the store maps its failures to UNAVAILABLE
(DEPENDENCY_UNAVAILABLE) with a message naming the object store; a probe
keeps ``available`` current so calls that would only presign refuse at once
while the store is down instead of handing out URLs that cannot work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from parley_core.config import S3Settings
from parley_core.errors import Reason, Unavailable
from parley_core.storage.s3 import (
    open_client,
    parse_restore,
    read_credentials,
    signing_options,
)
from svc_media.model import (
    LifecyclePlan,
    ObjectInfo,
    PartPlan,
    Presigned,
    RestoreStart,
    StoredPart,
    StoreRefused,
    TransitionsUnsupported,
)
from svc_media.storage.lifecycle import merged_rules
from svc_media.storage.presign import PROBE_KEY, Endpoint, Signer

log = structlog.get_logger(__name__)

STORE_DOWN = "the object store (S3) cannot be reached; media is unavailable, messaging is not"
# Seconds between probes of the bucket.
PROBE_SECONDS = 2.0
STREAM_CHUNK = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_NO_LIFECYCLE = "NoSuchLifecycleConfiguration"


def store_unavailable() -> Unavailable:
    return Unavailable(STORE_DOWN, reason=Reason.DEPENDENCY_UNAVAILABLE, retry_after_seconds=2.0)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _object_info(
    *, size: Any, checksum: str | None, storage_class: str | None, restore: str | None
) -> ObjectInfo:
    # A multipart object's checksum is of its parts' checksums ("...-N").
    sha = base64.b64decode(checksum) if checksum and "-" not in checksum else None
    restoring, restored_until = parse_restore(restore)
    return ObjectInfo(
        size=int(size),
        sha256=sha,
        storage_class=str(storage_class or "STANDARD"),
        restoring=restoring,
        restored_until=restored_until,
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _signer(presigner: Any, bucket: str, credentials: dict[str, str], region: str) -> Signer:
    probe = presigner.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": PROBE_KEY}, ExpiresIn=1
    )
    return Signer(
        Endpoint.from_probe(str(probe)),
        access_key=credentials["aws_access_key_id"],
        secret_key=credentials["aws_secret_access_key"],
        region=region,
    )


class S3Objects:
    """The bucket of ``settings``; open with ``await S3Objects.open(...)``."""

    def __init__(
        self,
        settings: S3Settings,
        client: Any,
        presigner: Any,
        exit: Any,
        signer: Signer | None = None,
    ) -> None:
        self._settings = settings
        self._bucket = settings.bucket
        self._client = client
        self._presigner = presigner
        self._exit = exit
        self._signer = signer
        self.available = True
        self.errors = 0

    @classmethod
    async def open(cls, settings: S3Settings, *, timeout_seconds: float) -> S3Objects:
        exit = contextlib.AsyncExitStack()
        client = await open_client(settings, timeout_seconds=timeout_seconds, exit=exit)
        credentials = read_credentials(settings)
        presigner = botocore.session.get_session().create_client(
            "s3",
            region_name=settings.region,
            endpoint_url=settings.public_endpoint_url or settings.endpoint_url or None,
            config=Config(**signing_options(settings)),
            **credentials,
        )
        signer = None
        if credentials:
            signer = _signer(presigner, settings.bucket, credentials, settings.region)
        return cls(settings, client, presigner, exit, signer)

    async def close(self) -> None:
        await self._exit.aclose()

    # -- availability -----------------------------------------------------------------

    def ensure_available(self) -> None:
        if not self.available:
            raise store_unavailable()

    async def probe(self) -> bool:
        try:
            await self._client.head_bucket(Bucket=self._bucket)
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            if self.available:
                log.warning("object_store_down", error=repr(exc))
            self.available = False
            return False
        if not self.available:
            log.info("object_store_back")
        self.available = True
        return True

    async def run_probe(self, interval: float = PROBE_SECONDS) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval)

    async def _call(self, operation: str, **params: Any) -> Any:
        try:
            return await getattr(self._client, operation)(Bucket=self._bucket, **params)
        except ClientError as exc:
            status = _status(exc)
            # A 5xx is an outage; a 403 is the store refusing our credentials
            # (misconfiguration): neither is the client's doing.
            if status >= 500 or status in (401, 403):
                self._failed(operation, exc)
            raise StoreRefused(_code(exc) or str(status), status) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            self._failed(operation, exc)
        raise AssertionError("unreachable")

    def _failed(self, operation: str, exc: BaseException) -> NoReturn:
        self.errors += 1
        self.available = False
        log.warning("object_store_call_failed", operation=operation, error=repr(exc))
        raise store_unavailable() from None

    # -- presigning (local, no request) -------------------------------------------

    # The store checks a URL's date against its own clock: URLs are signed at
    # the wall clock's time (botocore does the same), ``now`` (the request's
    # time, injected in tests) dates only the Presigned's expiry.
    def _presign(
        self, operation: str, params: dict[str, Any], *, expires_in: int, now: float
    ) -> str:
        url: str = self._presigner.generate_presigned_url(
            operation, Params={"Bucket": self._bucket, **params}, ExpiresIn=expires_in
        )
        return url

    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int, now: float
    ) -> Presigned:
        checksum = _b64(sha256)
        headers = {"Content-Length": str(size), "x-amz-checksum-sha256": checksum}
        if self._signer is not None:
            url = self._signer.presign(
                "PUT", key, expires_in=expires_in, now=time.time(), headers=_lower(headers)
            )
        else:
            url = self._presign(
                "put_object",
                {"Key": key, "ContentLength": size, "ChecksumSHA256": checksum},
                expires_in=expires_in,
                now=now,
            )
        return Presigned("PUT", url, headers, now + expires_in)

    def presign_part(
        self, key: str, multipart_id: str, part: PartPlan, *, expires_in: int, now: float
    ) -> Presigned:
        checksum = _b64(part.sha256)
        headers = {"Content-Length": str(part.size), "x-amz-checksum-sha256": checksum}
        if self._signer is not None:
            url = self._signer.presign(
                "PUT",
                key,
                expires_in=expires_in,
                now=time.time(),
                params={"uploadId": multipart_id, "partNumber": str(part.number)},
                headers=_lower(headers),
            )
        else:
            url = self._presign(
                "upload_part",
                {
                    "Key": key,
                    "UploadId": multipart_id,
                    "PartNumber": part.number,
                    "ContentLength": part.size,
                    "ChecksumSHA256": checksum,
                },
                expires_in=expires_in,
                now=now,
            )
        return Presigned("PUT", url, headers, now + expires_in)

    def presign_get(self, key: str, *, expires_in: int, now: float) -> Presigned:
        if self._signer is not None:
            url = self._signer.presign("GET", key, expires_in=expires_in, now=time.time())
        else:
            url = self._presign("get_object", {"Key": key}, expires_in=expires_in, now=now)
        return Presigned("GET", url, {}, now + expires_in)

    # -- calls ------------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        reply = await self._call("create_multipart_upload", Key=key, ChecksumAlgorithm="SHA256")
        return str(reply["UploadId"])

    async def list_parts(self, key: str, multipart_id: str) -> list[StoredPart] | None:
        parts: list[StoredPart] = []
        marker = 0
        # At most 10,000 parts, 1,000 a page.
        for _ in range(11):
            try:
                reply = await self._call(
                    "list_parts", Key=key, UploadId=multipart_id, PartNumberMarker=marker
                )
            except StoreRefused as exc:
                if exc.code in _MISSING or exc.status == 404:
                    return None
                raise
            for item in reply.get("Parts", ()):
                parts.append(
                    StoredPart(int(item["PartNumber"]), int(item["Size"]), str(item["ETag"]))
                )
            if not reply.get("IsTruncated"):
                break
            marker = int(reply.get("NextPartNumberMarker", 0))
        return parts

    async def complete_multipart(
        self, key: str, multipart_id: str, parts: Sequence[tuple[StoredPart, bytes]]
    ) -> None:
        await self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=multipart_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": _b64(sha)}
                    for p, sha in parts
                ]
            },
        )

    async def abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", Key=key, UploadId=multipart_id)
        except StoreRefused as exc:
            if exc.code not in _MISSING and exc.status != 404:
                raise

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            reply = await self._call("head_object", Key=key, ChecksumMode="ENABLED")
        except StoreRefused as exc:
            if exc.code in _MISSING or exc.status == 404:
                return None
            raise
        return _object_info(
            size=reply["ContentLength"],
            checksum=reply.get("ChecksumSHA256"),
            storage_class=reply.get("StorageClass"),
            restore=reply.get("Restore"),
        )

    async def restore(self, key: str, *, days: int, tier: str) -> RestoreStart:
        """RestoreObject: a readable copy of an archived object for ``days``."""
        try:
            reply = await self._client.restore_object(
                Bucket=self._bucket,
                Key=key,
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            # InvalidObjectState comes as a 403: the object's class, not our
            # credentials, so it must not mark the store down.
            if code == "InvalidObjectState":
                return RestoreStart.NOT_ARCHIVED
            if code == "RestoreAlreadyInProgress" or status == 409:
                return RestoreStart.IN_PROGRESS
            if code in _MISSING or status == 404:
                return RestoreStart.MISSING
            if status >= 500 or status in (401, 403):
                self._failed("restore_object", exc)
            raise StoreRefused(code or str(status), status) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            self._failed("restore_object", exc)
        # 202: a restore started; 200: a restored copy exists (its days moved).
        status = int(reply.get("ResponseMetadata", {}).get("HTTPStatusCode", 202))
        return RestoreStart.ALREADY_RESTORED if status == 200 else RestoreStart.STARTED

    async def install_lifecycle(self, plan: LifecyclePlan) -> bool:
        """Put our lifecycle rules beside the operator's; whether anything changed.

        TransitionsUnsupported when the store refuses transition rules with
        501 (SeaweedFS); StoreRefused for any other refusal. Neither marks
        the store down: its objects still work."""
        try:
            reply = await self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
            existing = list(reply.get("Rules", ()))
        except ClientError as exc:
            if _code(exc) != _NO_LIFECYCLE:
                raise self._lifecycle_refused(exc) from None
            existing = []
        except (TimeoutError, BotoCoreError, OSError):
            raise store_unavailable() from None
        rules = merged_rules(existing, plan)
        if rules == existing:
            return False
        try:
            await self._client.put_bucket_lifecycle_configuration(
                Bucket=self._bucket, LifecycleConfiguration={"Rules": rules}
            )
        except ParamValidationError as exc:
            # An operator's rule as the store reported it that botocore will not send back.
            raise StoreRefused(f"InvalidRules: {exc}", 400) from None
        except ClientError as exc:
            if _status(exc) == 501 and plan.transitions:
                raise TransitionsUnsupported(_code(exc) or "501") from None
            raise self._lifecycle_refused(exc) from None
        except (TimeoutError, BotoCoreError, OSError):
            raise store_unavailable() from None
        return True

    def _lifecycle_refused(self, exc: ClientError) -> Exception:
        status = _status(exc)
        if status >= 500:
            return store_unavailable()
        return StoreRefused(_code(exc) or str(status), status)

    async def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as the store keeps them (tests, operators)."""
        try:
            reply = await self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == _NO_LIFECYCLE:
                return []
            raise
        return list(reply.get("Rules", ()))

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        reply = await self._call("get_object", Key=key)
        body = reply["Body"]
        try:
            while True:
                try:
                    chunk = await body.read(STREAM_CHUNK)
                except (TimeoutError, BotoCoreError, OSError) as exc:
                    self._failed("get_object", exc)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        try:
            await self._call("delete_object", Key=key)
        except StoreRefused as exc:
            if exc.code not in _MISSING and exc.status != 404:
                raise

    async def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (tests and operators looking for leaks)."""
        found: list[str] = []
        token: str | None = None
        for _ in range(1000):
            params: dict[str, Any] = {"Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            reply = await self._call("list_objects_v2", **params)
            found += [item["Key"] for item in reply.get("Contents", ())]
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated") or not token:
                break
        return found

    async def multipart_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload in progress."""
        reply = await self._call("list_multipart_uploads")
        return [(u["Key"], u["UploadId"]) for u in reply.get("Uploads", ())]
