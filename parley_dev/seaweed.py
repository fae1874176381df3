"""SeaweedFS as the local stack's S3: `weed mini` (master, volume, filer and S3
in one process) on 127.0.0.1, telemetry off, every port chosen, its data
under the stack's data directory, one identity whose keys are generated once.

Facts behind the flags are in the design notes (STACK.md): ``-ip`` defaults to
the machine's external address and telemetry is on, so both are set; it
opens a dozen ports, each moved with the stack's ports.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import botocore.session
from botocore.config import Config

from parley_dev.layout import HOST, StackPorts

BUCKET = "parley-media"
REGION = "us-east-1"
IDENTITY = "parley"
ACCESS_KEY_FILE = "s3_access_key_id"
SECRET_KEY_FILE = "s3_secret_access_key"


@dataclass(frozen=True, slots=True)
class S3Keys:
    access_key_file: Path
    secret_key_file: Path

    def read(self) -> tuple[str, str]:
        return (
            self.access_key_file.read_text().strip(),
            self.secret_key_file.read_text().strip(),
        )


def ensure_keys(secrets_dir: Path) -> S3Keys:
    """The S3 identity's keys, made once: objects stored under them stay readable."""
    keys = S3Keys(secrets_dir / ACCESS_KEY_FILE, secrets_dir / SECRET_KEY_FILE)
    if not (keys.access_key_file.exists() and keys.secret_key_file.exists()):
        for path, value in (
            (keys.access_key_file, "PARLEY" + secrets.token_hex(7).upper()),
            (keys.secret_key_file, secrets.token_urlsafe(30)),
        ):
            path.touch(mode=0o600)
            path.write_text(value + "\n")
    return keys


def write_identity(path: Path, keys: S3Keys) -> None:
    access, secret = keys.read()
    identity = {
        "identities": [
            {
                "name": IDENTITY,
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(identity, indent=2) + "\n")


def weed_argv(weed: str, *, data_dir: Path, identity: Path, ports: StackPorts) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, admin, admin_grpc = (
        ports.seaweed
    )
    return [
        weed,
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        f"-s3.config={identity}",
        # Created at start if missing (one bucket per region).
        f"-bucket={BUCKET}",
    ]


def s3_client(endpoint: str, keys: S3Keys, *, timeout: float = 2.0) -> object:
    access, secret = keys.read()
    return botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )


async def bucket_ready(endpoint: str, keys: S3Keys) -> None:
    """Raise unless the media bucket answers a signed HEAD (S3 up, bucket made)."""

    def head() -> None:
        client = s3_client(endpoint, keys)
        client.head_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]

    await asyncio.to_thread(head)
