"""The developers' ``parley`` command (``./parley``): the chat commands of
:mod:`parley_cli`, plus ``parley up`` to run the local stack, ``parley bench`` and
``parley archive`` (the history archiver of the local stack)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from parley_cli import PROG, register_commands, run
from parley_dev.bench.args import add_bench_parser
from parley_dev.region_names import parse_region_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Parley: run a local stack and talk to it."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="run SecantusDB, Redis and the services locally until Ctrl-C",
        description="Start the local stack, restart crashed parts, stop everything on Ctrl-C.",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".parley"),
        help="database, signing keys, config and logs (default: ./.parley; kept across runs)",
    )
    up.add_argument(
        "--message-instances",
        type=_positive_int,
        default=1,
        metavar="N",
        help="number of svc_message instances (default: 1)",
    )
    up.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="add N to every default port, to run a second stack side by side",
    )
    up.add_argument(
        "--log-format",
        choices=["json", "console"],
        default="json",
        help="format of the services' logs under DATA_DIR/logs (default: json)",
    )
    up.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=(
            "YAML settings merged over the generated config: any key of the typed config"
            " (push providers, limits, retention, ...). The stack owns, and ignores from"
            " FILE and from PARLEY_* variables: mongo.uri, redis.url, redis.cluster,"
            " redis.cluster_nodes (--redis-cluster),"
            " auth.private_key_file, auth.public_key_files, auth.service_token_file,"
            " auth.operator_tokens_file, message.keys_target, message.media_target,"
            " media.message_target, keys.message_target, keys.presence_target,"
            " keys.media_target, keys.search_target, search.message_target,"
            " s3.endpoint_url, s3.public_endpoint_url, s3.region, s3.bucket,"
            " s3.access_key_id_file, s3.secret_access_key_file, s3.addressing_style,"
            " log_format (--log-format), and host, port and metrics_port of keys.server,"
            " message.server, presence.server, media.server and search.server (--port-offset)."
            " PARLEY_<SECTION>__<KEY>"
            " variables (and *_FILE secrets) reach the services and win over FILE;"
            " PARLEY_CONFIG is not read. A bad key or value stops before anything starts."
        ),
    )
    up.add_argument(
        "--redis-cluster",
        action="store_true",
        help=(
            "run Redis as a Redis Cluster of 3 masters and 3 replicas (ports from 6380 up,"
            " buses 10000 higher) and the services with redis.cluster on"
        ),
    )
    up.add_argument(
        "--regions",
        type=_region_names,
        metavar="A,B",
        help=(
            "run one stack per region (e.g. eu,us) in DATA_DIR/<region>, each region's ports"
            " 100 above the previous one's, joined by fault proxies (7190 up) and each with its"
            " topology file; not with --redis-cluster"
        ),
    )
    up.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="turn tracing on, exporting OTLP/gRPC to URL (e.g. http://127.0.0.1:4317)",
    )
    register_commands(commands)
    client_commands = sorted(name for name in commands.choices if name != "up")
    up.set_defaults(func=_cmd_up, client_commands=client_commands)
    # After client_commands: bench is a developer tool, not a chat command for the banner.
    add_bench_parser(commands)
    # `archive` is the chat client's (archiving a conversation in the inbox).
    archive = commands.add_parser(
        "archiver",
        help="the history archiver of the local stack: run a pass, status, pause, resume",
        description=(
            "Runs `python -m svc_message archive ACTION` against the local stack's config"
            " (DATA_DIR/parley.yaml); a deployment runs the same command in a svc_message pod."
        ),
    )
    archive.add_argument("action", choices=["run", "status", "pause", "resume"])
    archive.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".parley"),
        help="the stack's data directory, as given to `parley up` (default: ./.parley)",
    )
    archive.set_defaults(func=_cmd_archive)
    return parser


def _cmd_archive(args: argparse.Namespace) -> int:
    config = args.data_dir / "parley.yaml"
    if not config.exists():
        print(
            f"parley archiver: no {config}; start the stack with `parley up` first",
            file=sys.stderr,
        )
        return 2
    command = [sys.executable, "-m", "svc_message", "archive", args.action, "--config", str(config)]
    return subprocess.run(command, check=False).returncode


def _region_names(text: str) -> list[str]:
    try:
        return parse_region_names(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def _cmd_up(args: argparse.Namespace) -> int:
    # Imported here: the stack pulls in pymongo, redis and grpc, which would slow
    # every client command down for nothing.
    from parley_dev.up import run_up_command
    from parley_dev.up_regions import run_regions_command

    if args.regions:
        if args.redis_cluster:
            print(f"{PROG} up: --regions does not run with --redis-cluster", file=sys.stderr)
            return 2
        return run_regions_command(
            regions=args.regions,
            data_dir=args.data_dir,
            message_instances=args.message_instances,
            port_offset=args.port_offset,
            log_format=args.log_format,
            config_file=args.config,
            otlp_endpoint=args.otlp_endpoint,
        )
    return run_up_command(
        data_dir=args.data_dir,
        message_instances=args.message_instances,
        port_offset=args.port_offset,
        log_format=args.log_format,
        client_commands=args.client_commands,
        otlp_endpoint=args.otlp_endpoint,
        config_file=args.config,
        redis_cluster=args.redis_cluster,
    )


if __name__ == "__main__":
    sys.exit(main())
