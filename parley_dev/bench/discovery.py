"""Where a running stack's processes are, for CPU accounting without --start."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from parley_dev.bench import procstat


def discover_stack_pids(
    keys_target: str, message_targets: list[str], data_dir: Path
) -> tuple[dict[str, int], list[str]]:
    """PIDs of a running stack's processes, by the ports they listen on.

    The services' ports come from the targets; SecantusDB's and Redis's from the
    config that ``parley up`` wrote into its data directory, if there is one.
    """
    wanted: dict[int, str] = {_port(keys_target): "svc_keys"}
    for index, target in enumerate(message_targets):
        wanted[_port(target)] = f"svc_message-{index}"
    notes: list[str] = []
    config_path = data_dir / "parley.yaml"
    if config_path.exists():
        tree = yaml.safe_load(config_path.read_text()) or {}
        for name, url in (
            ("secantusdb", tree.get("mongo", {}).get("uri")),
            ("redis", tree.get("redis", {}).get("url")),
        ):
            with contextlib.suppress(ValueError, TypeError):
                port = urlsplit(str(url)).port
                if port is not None:
                    wanted[port] = name
    else:
        notes.append(f"no {config_path}: CPU of SecantusDB and Redis is not measured (use --pid)")
    found = procstat.pids_listening_on(wanted)
    pids = {wanted[port]: pid for port, pid in found.items()}
    lost = sorted(set(wanted.values()) - set(pids))
    if lost:
        notes.append(f"no listening process found for {', '.join(lost)}: CPU not measured")
    return pids, notes


def _port(target: str) -> int:
    return int(target.rsplit(":", 1)[1])
