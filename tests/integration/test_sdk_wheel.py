"""The SDK's and the CLI's wheels installed alone: a client gets the generated API
and nothing of the server (no database or cache driver, no service module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 300
SERVER_ONLY = ("pymongo", "bson", "redis", "hiredis", "uvloop", "secantus", "secantusdb")
FIRST_PARTY_SERVER = ("parley_core", "svc_", "parley_dev", "parley_operator")

# Run in the fresh venv, away from the checkout: what a client's `import` loads.
PROBE = """
import asyncio, json, os, sys, tempfile
import parley.message.v1.messages_pb2
import parley_sdk, parley_sdk.e2ee
from parley_sdk import Client, DeviceStore, RetryPolicy

async def construct():
    # Channels connect lazily: no server is needed to build a client.
    client = await Client.connect(keys_target="127.0.0.1:9", message_target="127.0.0.1:9")
    await client.close()

with tempfile.TemporaryDirectory() as directory:
    DeviceStore.open(os.path.join(directory, "device.db")).close()
asyncio.run(construct())
RetryPolicy()
import parley_cli
print(json.dumps({
    "modules": sorted(sys.modules),
    "files": [parley.__file__, parley_sdk.__file__, parley_cli.__file__],
}))
"""


def uv() -> list[str]:
    """uv as `uv run` exposes it, else as ./parley installs it."""
    for command in ([os.environ.get("UV", "")], ["uv"], [sys.executable, "-m", "uv"]):
        if command[0] and shutil.which(command[0]) and _works([*command, "--version"]):
            return command
    if _works(["python3", "-m", "uv", "--version"]):
        return ["python3", "-m", "uv"]
    raise AssertionError("uv is needed to build the wheels (./parley installs it)")


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    # A clean environment: neither this venv nor the checkout may leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    return headers.get_all("Requires-Dist") or []


def top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist() if ".dist-info/" not in name}


def test_the_sdk_and_cli_wheels_install_alone_without_the_server(tmp_path: Path) -> None:
    dist, venv, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    tool = uv()
    try:
        run(*tool, "build", "--wheel", "sdk", "--out-dir", dist)
        run(*tool, "build", "--wheel", "cli", "--out-dir", dist)
        (sdk_wheel,) = dist.glob("parley_sdk-*.whl")
        (cli_wheel,) = dist.glob("parley_cli-*.whl")

        # The generated API ships inside the SDK; nothing of the server does.
        assert top_level(sdk_wheel) == {"parley", "parley_sdk"}
        assert top_level(cli_wheel) == {"parley_cli"}
        requirements = [r.lower() for r in requires_dist(sdk_wheel) + requires_dist(cli_wheel)]
        assert any(r.startswith("x3dh") for r in requirements), requirements
        for requirement in requirements:
            assert not requirement.startswith(SERVER_ONLY), requirement

        run(*tool, "venv", "--quiet", "--python", sys.executable, venv)
        python = venv / "bin" / "python"
        run(*tool, "pip", "install", "--quiet", "--python", python, sdk_wheel, cli_wheel)
        loaded = json.loads(run(python, "-c", PROBE, cwd=elsewhere))

        for file in loaded["files"]:
            assert Path(file).is_relative_to(venv), loaded["files"]
        roots = {name.split(".")[0] for name in loaded["modules"]}
        assert "parley_sdk" in roots and "parley" in roots
        assert not [r for r in roots if r.startswith(SERVER_ONLY + FIRST_PARTY_SERVER)], roots
        assert "signup" in run(venv / "bin" / "parley", "--help", cwd=elsewhere)
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(dist, ignore_errors=True)
