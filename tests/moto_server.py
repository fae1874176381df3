"""A moto S3 server of a test's own, on a free loopback port: the one local
server with archived objects (GET of a GLACIER object is 403
InvalidObjectState until RestoreObject). It keeps objects in memory and checks
no signature or expiry, so tests of presigned URLs use SeaweedFS instead."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from parley_core.config import S3Settings
from parley_dev.layout import find_executable
from parley_dev.probes import wait_until_ready
from parley_dev.process import ManagedProcess, free_port

BUCKET = "parley-media"
REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    process: ManagedProcess
    settings: S3Settings


async def _answers(endpoint: str) -> None:
    def get() -> None:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as reply:
            reply.read()

    await asyncio.to_thread(get)


def _write_keys(root: Path) -> tuple[Path, Path]:
    # moto takes any keys; files, because svc_media reads credentials from files only.
    access, secret = root / "moto_access_key_id", root / "moto_secret_access_key"
    access.write_text("testing\n")
    secret.write_text("testing\n")
    return access, secret


@contextlib.asynccontextmanager
async def own_moto_server(root: Path, *, bucket: str = BUCKET) -> AsyncIterator[MotoS3]:
    """moto's S3 with ``bucket`` created; stopped at the end."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "moto",
        [
            find_executable("moto_server", "run `uv sync` (moto is a dev dependency)"),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        log_path=root / "moto.log",
        cwd=root,
    )
    process.start()
    try:
        await wait_until_ready(process, lambda: _answers(endpoint), what="moto", timeout=30)
        access, secret = _write_keys(root)
        settings = S3Settings(
            endpoint_url=endpoint,
            region=REGION,
            bucket=bucket,
            access_key_id_file=access,
            secret_access_key_file=secret,
        )
        request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())
        yield MotoS3(endpoint, process, settings)
    finally:
        await process.terminate(10)
