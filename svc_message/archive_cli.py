"""``python -m svc_message archive run|status|pause|resume``: the operator's
handle on the history archiver, against the deployment's MongoDB and S3.

``pause``/``resume`` flip the switch every svc_message process reads before
each pass; ``run`` makes one pass now from this process (it takes the lease
like a service process would, so it never runs beside one); ``status``
prints the tiers' sizes and the last pass as JSON.

``run --hold-at STEP`` stops the pass right after that step of its first
move, says so on stdout and waits to be killed: the crash tests SIGKILL it
there and check that a rerun repairs the half-done move.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from parley_core.config import ConfigError, Settings, load_settings
from parley_core.log_setup import configure_logging
from parley_core.regions import RegionMap
from parley_core.storage import mongo as mongo_storage
from parley_core.topology import file_reader, parse_topology
from svc_message.archive_wiring import build_archive
from svc_message.domain.archiver import STEPS, StepHook


def _owned_here(settings: Settings) -> Callable[[str], bool]:
    """Whether this region owns a conversation, by the topology file as it is
    now: a pass run by hand must archive only what the services would (a
    replica never writes archive objects for another region's conversations)."""
    content = file_reader(Path(settings.topology.path))() if settings.topology.path else None
    topology = parse_topology(content) if content else None
    regions = RegionMap.from_topology(topology, region=settings.region)
    return lambda conversation_id: regions.region_or_self(conversation_id) == regions.self_region


def _holding_at(step: str | None) -> StepHook | None:
    if step is None:
        return None

    async def hold(reached: str) -> None:
        if reached == step:
            print(f"held at {step}", flush=True)
            # Until killed: the caller's SIGKILL is the point.
            await asyncio.Event().wait()

    return hold


async def _command(
    command: str, config: Path | None, hold_at: str | None = None
) -> dict[str, object]:
    settings = load_settings(config)
    # Logs to stderr, as the services write them: stdout is the JSON answer.
    configure_logging(
        service="svc_message-archive", level=settings.log_level, fmt=settings.log_format
    )
    client = mongo_storage.connect(settings.mongo, app_name="svc_message-archive")
    try:
        db = mongo_storage.durable_database(client, settings.mongo)
        _, archiver, objects = await build_archive(
            settings, db, on_step=_holding_at(hold_at), owns=_owned_here(settings)
        )
        try:
            if command in ("pause", "resume"):
                await archiver.set_paused(command == "pause")
                return {"paused": command == "pause"}
            if command == "run":
                report = await archiver.tick()
                if report is None:
                    return {"ran": False, "why": "paused, or another process holds the lease"}
                await archiver.release()
                return {"ran": True, **dataclasses.asdict(report)}
            status = await archiver.status()
            return {
                "paused": status.state.paused,
                "last_pass_at": status.state.last_pass_at,
                "lag_seconds": status.state.lag_seconds,
                "moved_total": status.state.moved_total,
                "hot_entries": status.hot_entries,
                "hot_bytes": status.hot_bytes,
                "cold_rows": status.cold_rows,
                "cold_objects": status.cold_objects,
                "cold_bytes": status.cold_bytes,
                "glacier_rows": status.glacier_rows,
                "glacier_objects": status.glacier_objects,
                "glacier_bytes": status.glacier_bytes,
            }
        finally:
            await objects.close()
    finally:
        await client.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m svc_message archive", description="The history archiver"
    )
    parser.add_argument("command", choices=("run", "status", "pause", "resume"))
    parser.add_argument("--config", type=Path, help="YAML config file (or PARLEY_CONFIG)")
    parser.add_argument(
        "--hold-at",
        choices=STEPS,
        help="run: stop after this step of the first move and wait to be killed (crash tests)",
    )
    args = parser.parse_args(argv)
    if args.hold_at and args.command != "run":
        parser.error("--hold-at goes with run")
    try:
        result = asyncio.run(_command(args.command, args.config, args.hold_at))
    except ConfigError as exc:
        raise SystemExit(f"svc_message archive: {exc}") from None
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
