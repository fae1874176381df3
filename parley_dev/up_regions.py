"""``parley up --regions eu,us``: several regions on this machine, joined by fault proxies.

Each region is a whole local stack in ``DATA_DIR/<region>`` with ports shifted
by ``REGION_PORT_STEP`` per region (after ``--port-offset``), and its own
topology file naming the others' peer endpoints through the proxies
(parley_dev.regions). Crashed processes are restarted region by region, as
``parley up`` does for one stack.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from parley_cli import PROG
from parley_core.config import ENV_PREFIX, NESTED, ConfigError, read_config_file
from parley_dev.regions import RegionsStack
from parley_dev.stack_config import (
    OWNED_KEYS,
    owned_keys_in,
    resolve_paths,
    service_environment,
)
from parley_dev.supervisor import Supervisor
from parley_dev.up import run_harness

TOPOLOGY_VARIABLES = f"{ENV_PREFIX}TOPOLOGY{NESTED.upper()}"


def run_regions_command(
    *,
    regions: Sequence[str],
    data_dir: Path,
    message_instances: int,
    port_offset: int,
    log_format: Literal["json", "console"],
    config_file: Path | None = None,
    otlp_endpoint: str | None = None,
) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s parley %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    log = logging.getLogger("parley.up")
    try:
        user_config = (
            resolve_paths(read_config_file(config_file), config_file.resolve().parent)
            if config_file
            else {}
        )
        service_environ, ignored_variables = service_environment(os.environ, Path.cwd())
        # Each region's topology file is the harness's: a variable would point
        # every region at one file (variables win over the config file).
        for name in [n for n in service_environ if n.startswith(TOPOLOGY_VARIABLES)]:
            del service_environ[name]
            ignored_variables.append(name)
        harness = RegionsStack.with_fixed_ports(
            root=data_dir,
            regions=regions,
            message_instances=message_instances,
            port_offset=port_offset,
            log_format=log_format,
            user_config=user_config,
            service_environ=service_environ,
            extra_config=(
                {"telemetry": {"tracing": {"enabled": True, "otlp_endpoint": otlp_endpoint}}}
                if otlp_endpoint
                else None
            ),
        )
    except (ConfigError, ValueError) as error:
        log.error("%s", error)
        return 2
    for key in owned_keys_in(user_config):
        log.warning("ignoring %s from %s: %s", key, config_file, OWNED_KEYS[key])
    for name in ignored_variables:
        log.warning("ignoring %s: parley up sets that part of the config itself", name)
    return asyncio.run(run_regions_up(harness))


async def run_regions_up(harness: RegionsStack) -> int:
    async def supervise(stop: asyncio.Event) -> None:
        await asyncio.gather(
            *(
                Supervisor(stack, log=logging.getLogger(f"parley.up.{name}")).run(stop)
                for name, stack in harness.stacks.items()
            )
        )

    return await run_harness(
        harness,
        what=f"regions {', '.join(harness.names)}",
        banner_text=lambda: regions_banner(harness),
        supervise=supervise,
    )


def regions_banner(harness: RegionsStack) -> str:
    """Every region's endpoints, the proxies between them, and how to talk to one region."""
    rows = harness.describe()
    width = max(len(label) for label, _ in rows)
    lines = [
        "",
        f"Parley is up. Regions: {', '.join(harness.names)}.",
        *(f"  {label:<{width}}  {address}" for label, address in rows),
        "A region's traffic to another crosses the proxy listed for that pair.",
    ]
    first = harness.region(harness.names[0])
    lines.append(
        f"Talk to a region: ./{PROG} signup alice --keys-target {first.keys_target}"
        f" --message-target {first.message_targets[0]}"
        f" --presence-target {first.presence_target}"
    )
    lines.append("Press Ctrl-C to stop; data stays in the data directory.")
    return "\n".join(lines)
