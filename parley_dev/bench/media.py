"""The ``media`` scenario: upload and download throughput through svc_media,
beside bare presigned requests to the same object store in the same run.

Setup (CPU recorded): C users sign up, one per worker (each worker uploads
as itself and downloads what it uploaded, so every download passes the
uploader check). Then, for each size (1 MiB and 16 MiB by default), four
closed-loop phases of C workers. Each phase's window is cut into turns (3 in
a full run), each after its own warm-up, bare_put and media_upload taking
turns, then bare_get and media_download, so that a burst of other work on a
shared machine falls on both sides alike:

- bare_put: the store alone. The client presigns a PUT with the store's keys
  (signing Content-Length and x-amz-checksum-sha256, as svc_media does, with
  the same signer svc_media uses, so neither side pays botocore's 2.5 ms a
  URL that the other does not) and sends it: what the bytes cost without
  svc_media.
- media_upload: CreateUpload -> the presigned PUT (above the multipart
  threshold: every part's PUT, in parallel) -> CompleteUpload, as a client
  does it; CreateUpload and CompleteUpload are timed on their own too.
- bare_get: a presigned GET of an object bare_put stored, read to the end.
- media_download: GetDownload (timed on its own) -> its presigned GET, read
  to the end.

Every upload is a new ciphertext (content addressing would answer a repeat
with ``already_stored``): random bytes shared by all uploads of a size with
the last 32 replaced, so making one costs 32 random bytes and one 32-byte
SHA-256 update of a saved state, the same for both sides. Bodies are sent
from a view of those bytes, never copied. Throughput is completed
operations x size / window, in MB/s (10^6 bytes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import grpc
import httpx
from botocore.config import Config

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley_core.config import MediaServiceSettings
from parley_dev.bench import procstat
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS, LoadResult, Window, closed_loop
from parley_dev.bench.media_report import MediaMeasurements, SizeRun, build_media_report
from parley_dev.bench.population import User, request_id, sign_up_users
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import StackTargets, progress, stack_targets
from svc_media.storage.presign import PROBE_KEY, Endpoint, Signer

MIB = 1 << 20
# The bytes that make each upload a new ciphertext.
TAIL_BYTES = 32
# What the bench declares as its part size: the services' default (8 MiB).
PART_SIZE = 8 * MIB
HTTP_TIMEOUT_SECONDS = 120.0
PRESIGN_SECONDS = 300
# Where the bare phases keep their objects, apart from svc_media's media/.
BARE_PREFIX = "bench-bare"
# Between a phase's name and its round in the CPU book.
ROUND_MARK = "#"


class TransferFailed(Exception):
    """The store refused or cut a presigned request."""


# -- ciphertexts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ciphertext:
    size: int
    sha256: bytes
    tail: bytes
    part_sha256s: tuple[bytes, ...]


class Ciphertexts:
    """Distinct ciphertexts of one size, each the shared random bytes with its
    own last TAIL_BYTES; hashes from saved SHA-256 states."""

    def __init__(self, size: int, *, part_size: int) -> None:
        if size <= TAIL_BYTES:
            raise ValueError(f"sizes must be above {TAIL_BYTES} bytes")
        self.size = size
        self.part_size = part_size
        self._base = memoryview(os.urandom(size - TAIL_BYTES))
        self._whole = hashlib.sha256(self._base)
        self._parts: list[bytes] = []
        self._last_part: Any = None
        if part_size:
            starts = range(0, size, part_size)
            *full, last = starts
            if size - last <= TAIL_BYTES:
                raise ValueError("the last part must be longer than the unique tail")
            self._parts = [hashlib.sha256(self._base[s : s + part_size]).digest() for s in full]
            self._last_part = hashlib.sha256(self._base[last:])

    def make(self) -> Ciphertext:
        tail = os.urandom(TAIL_BYTES)
        whole = self._whole.copy()
        whole.update(tail)
        parts: tuple[bytes, ...] = ()
        if self.part_size:
            last = self._last_part.copy()
            last.update(tail)
            parts = (*self._parts, last.digest())
        return Ciphertext(self.size, whole.digest(), tail, parts)

    async def body(
        self, blob: Ciphertext, start: int = 0, end: int | None = None
    ) -> AsyncIterator[Any]:
        """Bytes ``start`` to ``end`` of ``blob`` as views (httpx sends them as they are)."""
        end = blob.size if end is None else end
        shared = blob.size - TAIL_BYTES
        if start < shared:
            yield self._base[start : min(end, shared)]
        if end > shared:
            yield blob.tail[max(start, shared) - shared : end - shared]

    def part(self, blob: Ciphertext, number: int) -> AsyncIterator[Any]:
        """Part ``number`` (from 1) of ``blob``."""
        start = (number - 1) * self.part_size
        return self.body(blob, start, min(blob.size, start + self.part_size))


# -- the two sides ------------------------------------------------------------------------


class BareStore:
    """Presigned requests straight to the store, signed with its keys here."""

    def __init__(self, s3: dict[str, Any]) -> None:
        access = Path(str(s3["access_key_id_file"])).read_text().strip()
        secret = Path(str(s3["secret_access_key_file"])).read_text().strip()
        self.bucket = str(s3["bucket"])
        region = str(s3.get("region") or "us-east-1")
        presigner = botocore.session.get_session().create_client(
            "s3",
            region_name=region,
            endpoint_url=str(s3.get("public_endpoint_url") or s3["endpoint_url"]),
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": str(s3.get("addressing_style") or "path")},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        # botocore resolves where the bucket is once; svc_media's signer signs each URL.
        probe = presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": PROBE_KEY}, ExpiresIn=1
        )
        self._signer = Signer(
            Endpoint.from_probe(str(probe)), access_key=access, secret_key=secret, region=region
        )

    def put(self, key: str, blob: Ciphertext) -> tuple[str, dict[str, str]]:
        checksum = _b64(blob.sha256)
        headers = {"Content-Length": str(blob.size), "x-amz-checksum-sha256": checksum}
        url = self._signer.presign(
            "PUT",
            key,
            expires_in=PRESIGN_SECONDS,
            now=time.time(),
            headers={name.lower(): value for name, value in headers.items()},
        )
        return url, headers

    def get(self, key: str) -> str:
        return self._signer.presign("GET", key, expires_in=PRESIGN_SECONDS, now=time.time())


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    body: AsyncIterator[Any],
    headers: dict[str, str],
) -> None:
    reply = await http.request(method, url, content=body, headers=headers)
    if reply.status_code != 200:
        raise TransferFailed(f"{method} answered {reply.status_code}: {reply.text[:200]}")


async def fetch(http: httpx.AsyncClient, url: str, size: int) -> None:
    """GET ``url`` and read every byte (not kept)."""
    got = 0
    async with http.stream("GET", url) as reply:
        if reply.status_code != 200:
            raise TransferFailed(f"GET answered {reply.status_code}")
        async for chunk in reply.aiter_raw():
            got += len(chunk)
    if got != size:
        raise TransferFailed(f"GET gave {got} of {size} bytes")


@dataclass
class Steps:
    """Latencies of the RPCs inside an operation, kept with when they ended so
    that only those of operations in the window count."""

    ended: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    async def timed(self, name: str, call: Awaitable[Any]) -> Any:
        began = time.perf_counter_ns()
        result = await call
        done = time.perf_counter_ns()
        self.ended.setdefault(name, []).append((done, done - began))
        return result

    def within(self, window: Window) -> dict[str, list[int]]:
        return {
            name: [ns for done, ns in samples if window.contains(done)]
            for name, samples in self.ended.items()
        }


@dataclass
class Workbench:
    config: BenchConfig
    cpu: procstat.CpuBook
    pids: dict[str, int]
    users: list[User]
    media: mgrpc.MediaServiceAsyncStub
    bare: BareStore
    http: httpx.AsyncClient
    run_tag: str
    multipart_threshold: int

    async def phase(
        self, name: str, round_: int, call: Callable[[int], Awaitable[None]]
    ) -> tuple[LoadResult, Window]:
        """One round of a phase: a warm-up, then its share of the phase's window."""
        rounds = self.config.media_rounds
        begin, end = self.cpu.hooks(f"{name}{ROUND_MARK}{round_}", self.pids)
        window = Window.after(self.config.warmup_s, self.config.duration_s / rounds)
        progress(
            f"{name} ({round_ + 1}/{rounds}): {self.config.media_concurrency} closed-loop workers"
        )
        result = await closed_loop(
            self.config.media_concurrency, call, window=window, on_start=[begin], on_end=[end]
        )
        return result, window


def merged(results: Sequence[LoadResult]) -> LoadResult:
    """The rounds of one phase as one: their windows, completions and latencies summed."""
    total = LoadResult(sum(r.window_s for r in results))
    for result in results:
        total.completed += result.completed
        total.latencies_ns.extend(result.latencies_ns)
        total.errors.update(result.errors)
    return total


def merged_cpu(
    rounds: Mapping[str, Mapping[str, float | None]],
) -> dict[str, dict[str, float | None]]:
    """CPU seconds of each phase's rounds summed per process; None where a
    round did not measure it (a wrong sum would be worse than none)."""
    total: dict[str, dict[str, float | None]] = {}
    for name, per_process in rounds.items():
        into = total.setdefault(name.split(ROUND_MARK, 1)[0], {})
        for process, seconds in per_process.items():
            before = into.get(process, 0.0)
            into[process] = None if before is None or seconds is None else before + seconds
    return {
        phase: {p: None if v is None else round(v, 3) for p, v in sorted(per.items())}
        for phase, per in total.items()
    }


async def measure_size(bench: Workbench, size: int, label: str) -> SizeRun:
    multipart = size > bench.multipart_threshold
    part_size = PART_SIZE if multipart else 0
    texts = Ciphertexts(size, part_size=part_size)
    counter = itertools.count()
    bare_keys: list[str] = []
    uploaded: list[list[str]] = [[] for _ in bench.users]
    upload_steps, download_steps = Steps(), Steps()

    async def bare_put(worker: int) -> None:
        blob = texts.make()
        key = f"{BARE_PREFIX}/{bench.run_tag}/{label}/{next(counter)}"
        url, headers = bench.bare.put(key, blob)
        await send(bench.http, "PUT", url, texts.body(blob), headers)
        bare_keys.append(key)

    async def media_upload(worker: int) -> None:
        user = bench.users[worker]
        blob = texts.make()
        request = mpb.CreateUploadRequest(
            request_id=request_id(),
            size=size,
            sha256=blob.sha256,
            content_class=mpb.CONTENT_CLASS_DOCUMENT,
            part_size=PART_SIZE if multipart else 0,
            part_sha256s=list(blob.part_sha256s),
        )
        created = await upload_steps.timed(
            "create_upload",
            bench.media.CreateUpload(request, metadata=user.metadata, timeout=CALL_TIMEOUT_SECONDS),
        )
        upload = created.upload
        if not created.HasField("upload"):
            raise TransferFailed("CreateUpload answered already_stored for a new ciphertext")
        if upload.HasField("put"):
            put = upload.put
            await send(bench.http, "PUT", put.url, texts.body(blob), dict(put.headers))
        else:
            # Every part at once, as the SDK sends them.
            pending = [part for part in upload.parts if not part.stored]
            await asyncio.gather(
                *(
                    send(bench.http, "PUT", p.url, texts.part(blob, n), dict(p.headers))
                    for n, p in ((part.part_number, part.request) for part in pending)
                )
            )
        media = await upload_steps.timed(
            "complete_upload",
            bench.media.CompleteUpload(
                mpb.CompleteUploadRequest(upload_id=upload.upload_id),
                metadata=user.metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
        )
        uploaded[worker].append(media.media_id)

    async def bare_get(worker: int) -> None:
        if not bare_keys:
            raise TransferFailed("bare_put stored nothing to read")
        key = bare_keys[next(counter) % len(bare_keys)]
        await fetch(bench.http, bench.bare.get(key), size)

    async def media_download(worker: int) -> None:
        mine = uploaded[worker]
        if not mine:
            raise TransferFailed("this worker uploaded nothing to download")
        download = await download_steps.timed(
            "get_download",
            bench.media.GetDownload(
                mpb.GetDownloadRequest(media_id=mine[next(counter) % len(mine)]),
                metadata=bench.users[worker].metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
        )
        await fetch(bench.http, download.get.url, size)

    rounds: dict[str, list[LoadResult]] = {}
    step_samples: dict[str, list[int]] = {}
    # Bare and svc_media take turns, a share of the window each, so a burst of
    # other work on the machine falls on both sides alike.
    for pair in (
        (("bare_put", bare_put, None), ("media_upload", media_upload, upload_steps)),
        (("bare_get", bare_get, None), ("media_download", media_download, download_steps)),
    ):
        for round_ in range(bench.config.media_rounds):
            for kind, call, steps in pair:
                result, window = await bench.phase(f"{kind}_{label}", round_, call)
                rounds.setdefault(kind, []).append(result)
                if steps is not None:
                    for step, samples in steps.within(window).items():
                        step_samples.setdefault(step, []).extend(samples)
    return SizeRun(
        label=label,
        size=size,
        parts=-(-size // part_size) if part_size else 1,
        results={kind: merged(results) for kind, results in rounds.items()},
        steps=step_samples,
    )


# -- the run ------------------------------------------------------------------------------


async def media_bench(config: BenchConfig) -> dict[str, Any]:
    """Bare and svc_media transfers at each size; the JSON-ready report."""
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-media-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    ok = False
    try:
        async with stack_targets(config, work_dir) as targets:
            measurements = await _measure(config, cpu, targets)
        # Others share the machine: how busy it was at the end says as much as the start.
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = True
        return build_media_report(measurements, machine=machine, parameters=_parameters(config))
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


async def _measure(
    config: BenchConfig, cpu: procstat.CpuBook, targets: StackTargets
) -> MediaMeasurements:
    if targets.media_target is None or targets.s3 is None:
        raise RuntimeError(
            "the stack's svc_media or object store is not known: use --start, or --data-dir "
            "of a running `parley up`"
        )
    pids = {**targets.pids, "bench_client": os.getpid()}
    keys_channel = grpc.aio.insecure_channel(targets.keys_target)
    media_channel = grpc.aio.insecure_channel(targets.media_target)
    connections = 4 * config.media_concurrency
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, limits=limits)
    try:
        setup_begin, setup_end = cpu.hooks("setup", pids)
        await setup_begin()
        progress(f"setup: {config.media_concurrency} users sign up")
        users = await sign_up_users(
            kgrpc.AccountServiceStub(keys_channel),
            count=config.media_concurrency,
            run_tag=secrets.token_hex(3),
            targets=1,
        )
        await setup_end()
        bench = Workbench(
            config=config,
            cpu=cpu,
            pids=pids,
            users=users,
            media=mgrpc.MediaServiceStub(media_channel),
            bare=BareStore(targets.s3),
            http=http,
            run_tag=secrets.token_hex(4),
            multipart_threshold=multipart_threshold(targets),
        )
        runs = [await measure_size(bench, size, size_label(size)) for size in config.media_sizes]
        return MediaMeasurements(sizes=runs, cpu_seconds=merged_cpu(cpu.phases))
    finally:
        await http.aclose()
        await keys_channel.close(None)
        await media_channel.close(None)


def multipart_threshold(targets: StackTargets) -> int:
    """The stack's multipart threshold (it refuses parts below it, wants them above)."""
    known = (targets.media_settings or {}).get("multipart_threshold_bytes")
    if isinstance(known, int):
        return known
    return MediaServiceSettings().multipart_threshold_bytes


def size_label(size: int) -> str:
    return f"{size // MIB}mib" if size % MIB == 0 else f"{size}b"


def _parameters(config: BenchConfig) -> dict[str, Any]:
    return {
        "scenario": "media",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "sizes_bytes": list(config.media_sizes),
        "sizes": [size_label(s) for s in config.media_sizes],
        "concurrency": config.media_concurrency,
        "users": config.media_concurrency,
        "part_size_bytes": PART_SIZE,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "rounds": config.media_rounds,
        "bare_put_signs": ["Content-Length", "x-amz-checksum-sha256"],
        "mb": "10^6 bytes",
    }
