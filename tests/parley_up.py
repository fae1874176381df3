"""Run the developers' `parley up` as a child process, for the tests of the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from parley_dev.process import port_is_free
from parley_dev.stack import StackPorts

# `./parley` runs this module; .venv/bin/parley is the chat client alone.
PARLEY = (sys.executable, "-m", "parley_dev")


def free_offset() -> int:
    """A --port-offset whose whole block of ports is free now."""
    for _ in range(100):
        offset = random.randrange(20000, 30000)
        if all(port_is_free(p) for p in StackPorts.defaults(1, offset=offset).all()):
            return offset
    raise AssertionError("no free block of ports for `parley up`")


def parley_environment(**variables: str) -> dict[str, str]:
    """This process's environment without its PARLEY_* variables, plus ``variables``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return {**inherited, **variables}


@contextlib.asynccontextmanager
async def parley_up(
    args: list[str],
    *,
    environment: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_seconds: float = 120.0,
) -> AsyncIterator[list[str]]:
    """Run `parley up ARGS` until it says it is up and yield the lines it printed;
    then SIGTERM it, check it exits 0, and append the rest of its output.
    ``ready_seconds`` bounds the start (several regions start several stacks)."""
    child = await asyncio.create_subprocess_exec(
        *PARLEY,
        "up",
        *args,
        env=parley_environment(**(environment or {})),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def read_until_up() -> None:
        assert child.stdout is not None
        while line := (await child.stdout.readline()).decode():
            output.append(line)
            if "Parley is up." in line:
                return
        raise AssertionError("parley up exited early:\n" + "".join(output))

    try:
        await asyncio.wait_for(read_until_up(), ready_seconds)
        yield output
        child.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(child.communicate(), 90)
        output.append(rest.decode())
        assert child.returncode == 0, "".join(output)
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
