"""The image (Containerfile, scripts/build_image.sh) built and run as Kubernetes would run it.

The build reuses .cache/image/ (base, wheels, binutils) and podman's layer
cache, so only a cold machine pays the full build. Then, against this test's
own SecantusDB, Redis and SeaweedFS (parley_dev's stack, backends only):

- every service runs from the image with ``--network host``, a read-only root
  filesystem, uid 10001, no capabilities and its credential files mounted
  read-only; each answers gRPC health SERVING and the SDK sends a message
  through them that the other user's device receives and decrypts;
- ``podman kube play`` runs the Deployment the operator builds for svc_presence
  (parley_operator.manifests, the pure builders): its command, env, mounts,
  security context and probes as built, with two changes a machine without a
  cluster needs (host network, and the ConfigMap and Secret volumes as host
  directories holding what the cluster would mount), and it becomes healthy.

Everything started here is removed by the name it was created with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from parley_dev.stack import LocalStack
from parley_operator.manifests import (
    RUN_AS,
    Owner,
    config_hash,
    config_map,
    deployment,
    topology_config_map,
)
from parley_operator.spec import SERVICE_MODULES, parse_region
from parley_sdk import Client, MessageEvent
from tests.helpers import TEST_LIMITS, is_serving, wait_until
from tests.users import unique_handle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build_image.sh"
# Written by the build script: runc, cgroupfs, file events, fixed ulimits.
CONTAINERS_CONF = ROOT / ".cache" / "image" / "containers.conf"
# A cold build (debootstrap, wheel downloads, two images) on a loaded 2-core machine.
BUILD_TIMEOUT = 1800
READY_SECONDS = 120.0
MESSAGE_SECONDS = 60.0


def _why_podman_cannot_run() -> str | None:
    """Why this machine cannot run podman at all, or None (then the test must run)."""
    if shutil.which("podman") or os.geteuid() == 0 or shutil.which("sudo"):
        return None  # present, or build_image.sh can install it
    return "podman is not installed and installing it needs root (or sudo), which is absent"


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    # Not in the checkout: `kube play` takes a directory named like an image
    # (./parley is the bootstrap script) for that image's build context.
    result = subprocess.run(
        ["podman", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stderr}"
    return result


async def apodman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(podman, *args, check=check)


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    """(services image, operator image), built by scripts/build_image.sh."""
    reason = _why_podman_cannot_run()
    if reason is not None:
        pytest.skip(f"THE IMAGE IS NOT TESTED ON THIS MACHINE: {reason}")
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{BUILD} failed:\n{result.stdout}\n{result.stderr}"
    print(f"build_image.sh: {time.monotonic() - started:.1f} s\n{result.stdout}")
    printed = subprocess.run(
        [str(BUILD), "--print-image"], capture_output=True, text=True, timeout=60, check=True
    )
    services, operator = printed.stdout.split()
    return services, operator


@pytest_asyncio.fixture(loop_scope="session")
async def backends(tmp_path: Path) -> AsyncIterator[LocalStack]:
    """SecantusDB, Redis and SeaweedFS of this test, and the services' config and
    credentials; the services themselves run from the image."""
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        message_instances=1,
        shutdown_grace_seconds=2.0,
        extra_config=TEST_LIMITS,
    )
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


def _give_to_run_as(*paths: Path) -> None:
    """Make files readable by the image's user only, as fsGroup and defaultMode 0440 do."""
    for path in paths:
        if os.geteuid() == 0:
            os.chown(path, RUN_AS, RUN_AS)
        else:  # rootless podman: uid 10001 of the container is a subordinate uid here
            podman("unshare", "chown", f"{RUN_AS}:{RUN_AS}", str(path))


@contextlib.asynccontextmanager
async def containers() -> AsyncIterator[list[str]]:
    """Names of the containers a test creates; each is removed at the end."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            await apodman("rm", "--force", "--time", "5", name, check=False)


def _logs(name: str) -> str:
    return podman("logs", "--tail", "40", name, check=False).stderr[-4000:]


async def _wait_serving(target: str, container: str) -> None:
    try:
        await wait_until(
            lambda: is_serving(target),
            timeout=READY_SECONDS,
            interval=0.5,
            what=f"gRPC health SERVING on {target}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlogs of {container}:\n{_logs(container)}") from None


async def test_services_run_from_the_image_and_carry_a_message(
    images: tuple[str, str], backends: LocalStack, tmp_path: Path
) -> None:
    image, _ = images
    stack = backends
    # The config file and the credential files it names, at the same paths
    # inside, read-only and readable by uid 10001 alone.
    secrets = [stack.secrets_dir, *stack.secrets_dir.iterdir(), stack.config_path]
    _give_to_run_as(*secrets)
    suffix = uuid.uuid4().hex[:8]
    targets = {
        "keys": stack.keys_target,
        "message": stack.message_targets[0],
        "presence": stack.presence_target,
        "media": stack.media_target,
        "search": stack.search_target,
    }
    async with containers() as names:

        async def start(service: str) -> None:
            name = f"parley-image-test-{service}-{suffix}"
            names.append(name)
            env = []
            if service == "message":
                env = ["--env", f"PARLEY_MESSAGE__OWNERSHIP__ADDRESS={targets['message']}"]
            await apodman(
                "run", "--detach", "--name", name, "--network", "host",
                "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
                "--user", f"{RUN_AS}:{RUN_AS}", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges",
                "--volume", f"{stack.secrets_dir}:{stack.secrets_dir}:ro",
                "--volume", f"{stack.config_path}:{stack.config_path}:ro",
                *env,
                image, "python", "-m", SERVICE_MODULES[service], "--config", str(stack.config_path),
            )  # fmt: skip
            await _wait_serving(targets[service], name)

        started = time.monotonic()
        await start("keys")
        await asyncio.gather(*(start(s) for s in ("message", "presence", "media", "search")))
        print(f"five services SERVING {time.monotonic() - started:.1f} s after the first start")

        for name in names:
            inspected = yaml.safe_load(
                (
                    await apodman(
                        "inspect", "--format", "{{json .HostConfig.ReadonlyRootfs}}", name
                    )
                ).stdout
            )
            assert inspected is True
            assert (await apodman("exec", name, "id", "-u")).stdout.strip() == str(RUN_AS)
        # The image carries no compiler, and its Python writes no bytecode.
        probe = await apodman(
            "run", "--rm", "--network", "none", image, "sh", "-c",
            "for c in gcc cc c++ clang ld as make; do command -v $c; done; "
            'python -c "import sys; print(sys.flags.dont_write_bytecode)"',
        )  # fmt: skip
        assert probe.stdout.split() == ["1"], probe.stdout

        text = f"through the image {suffix}"
        endpoints = {
            "keys_target": targets["keys"],
            "message_target": targets["message"],
            "presence_target": targets["presence"],
            "media_target": targets["media"],
        }
        alice = await Client.connect(
            **endpoints, store=str(tmp_path / "alice.db"), handle=unique_handle("alice"),
            device_name="laptop",
        )  # fmt: skip
        bob = await Client.connect(
            **endpoints, store=str(tmp_path / "bob.db"), handle=unique_handle("bob"),
            device_name="phone",
        )  # fmt: skip
        try:
            chat = await alice.create_direct_conversation(bob.account_id)
            await alice.send_text(chat.conversation.conversation_id, text)
            received: str | None = None
            async with asyncio.timeout(MESSAGE_SECONDS), bob.events() as stream:
                async for event in stream:
                    if isinstance(event, MessageEvent):
                        received = event.text
                        break
            assert received == text
        finally:
            await alice.close()
            await bob.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _host_directory(root: Path, name: str, files: dict[str, str]) -> dict[str, Any]:
    """A hostPath volume with ``files``, readable by the image's user, in place of a
    ConfigMap or Secret volume."""
    directory = root / name
    directory.mkdir(parents=True)
    for file, content in files.items():
        (directory / file).write_text(content)
        (directory / file).chmod(0o440)
    _give_to_run_as(directory, *directory.iterdir())
    return {"name": name, "hostPath": {"path": str(directory), "type": "Directory"}}


def _kube_play_manifest(stack: LocalStack, image: str, root: Path) -> tuple[dict[str, Any], int]:
    """svc_presence's Deployment as the operator builds it, made runnable by podman
    on one machine; and the gRPC port it answers on."""
    repository, tag = image.rsplit(":", 1)
    region = parse_region(
        "imagetest",
        "parley",
        {
            "region": "imagetest",
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "mongo": {"uriSecretRef": {"name": "parley-mongo", "key": "uri"}},
            "redis": {"urlSecretRef": {"name": "parley-redis", "key": "url"}},
            "tokens": {"secretName": "parley-tokens"},
            "services": {"presence": {"minReplicas": 1}},
        },
    )
    owner = Owner(name="imagetest", uid=str(uuid.uuid4()))
    config = config_map(region, owner)
    topology = topology_config_map(region, owner, generation=1)
    built = deployment(
        region, "presence", owner, replicas=1, config_hash=config_hash(config, "presence")
    )
    pod = built["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image
    # What the cluster would mount, from this test's stack.
    contents = {
        "config": dict(config["data"]),
        "topology": dict(topology["data"]),
        "mongo": {"uri": stack.mongo_uri},
        "redis": {"url": stack.redis_url},
        "tokens": {"signing.pub.pem": stack.public_key_path.read_text()},
    }
    volumes = []
    for volume in pod["volumes"]:
        if "configMap" in volume or "secret" in volume:
            volumes.append(_host_directory(root, volume["name"], contents[volume["name"]]))
        else:
            volumes.append(volume)
    pod["volumes"] = volumes
    # One machine, no pod network: the pod shares the host's, so its fixed
    # ports move to free ones (the environment overrides the config file).
    pod["hostNetwork"] = True
    port, metrics_port = _free_port(), _free_port()
    container["env"] += [
        {"name": "PARLEY_PRESENCE__SERVER__PORT", "value": str(port)},
        {"name": "PARLEY_PRESENCE__SERVER__METRICS_PORT", "value": str(metrics_port)},
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["grpc"]["port"] = port
    # On the host's network a containerPort only names a port; podman refuses
    # them there (it would map them), so they go.
    del container["ports"]
    return built, port


async def test_kube_play_runs_the_operators_deployment(
    images: tuple[str, str], backends: LocalStack, tmp_path: Path
) -> None:
    image, _ = images
    manifest, port = _kube_play_manifest(backends, image, tmp_path / "volumes")
    path = tmp_path / "presence-deployment.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    started = time.monotonic()
    played = ""
    try:
        played = (await apodman("kube", "play", str(path))).stdout
        # "Pod:\n<id>\nContainer:\n<id>\n": the ids of what it created.
        lines = played.split()
        container = lines[lines.index("Container:") + 1]
        await _wait_serving(f"127.0.0.1:{port}", container)
        print(f"kube play: SERVING after {time.monotonic() - started:.1f} s")
        inspected = yaml.safe_load(
            (
                await apodman(
                    "inspect", "--format", "{{json .HostConfig.ReadonlyRootfs}}", container
                )
            ).stdout
        )
        assert inspected is True
        assert (await apodman("exec", container, "id", "-u")).stdout.strip() == str(RUN_AS)
    finally:
        await apodman("kube", "down", str(path), check=False)
        if "Pod:" in played.split():
            lines = played.split()
            await apodman("pod", "rm", "--force", lines[lines.index("Pod:") + 1], check=False)
