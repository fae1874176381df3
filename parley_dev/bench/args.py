"""The ``parley bench`` subcommand's arguments.

Only argparse is imported here: building the parser must stay cheap for every
other ``parley`` command. The bench itself (grpc, the stack) loads when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parley_dev.bench.arg_types import (
    fraction,
    group_size,
    history_messages,
    local_target,
    name_pid,
    positive_float,
    positive_int,
    positive_seconds,
    rtt_ms,
    seconds,
    sizes_mib,
)
from parley_dev.bench.limits import MAX_CONTACTS, MAX_GROUP_MEMBERS

# (warm-up, measured seconds) of each phase.
QUICK_SECONDS = (0.5, 3.0)
FULL_SECONDS = (2.0, 15.0)
# Measured messages of the group scenario, quick and full.
QUICK_GROUP_MESSAGES = 40
FULL_GROUP_MESSAGES = 200
# The presence scenario, quick and full: users (all heartbeat but the watched
# one), subscribers of the watched user, online/offline toggles of it.
QUICK_PRESENCE = (1000, 200, 10)
FULL_PRESENCE = (5000, 1000, 50)
MIB = 1 << 20
DEFAULT_MEDIA_SIZES_MIB = (1.0, 16.0)
FULL_MEDIA_ROUNDS = 3
# The history scenario, quick and full: conversations, messages in each.
QUICK_HISTORY = (4, 400)
FULL_HISTORY = (16, 1500)
# The search scenario, quick and full: postings of the searched conversation,
# messages of them indexed through IndexMessage, messages in the device index.
QUICK_SEARCH = (50_000, 200, 10_000)
FULL_SEARCH = (1_000_000, 2000, 100_000)
# The regions scenario, quick and full: pings per path, measured messages per
# case, load sends/s and seconds.
QUICK_REGIONS = (50, 30, 20.0, 3.0)
FULL_REGIONS = (200, 200, 50.0, 20.0)


def add_bench_parser(commands: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="measure sends, delivery and fetch against a bare gRPC baseline",
        description=(
            "Load the local stack with simulated users over real gRPC and measure sustained "
            "durable sends, delivery latency at half that rate and fetches of recent "
            "messages, beside a bare gRPC baseline run on this machine in the same run. "
            "--scenario group instead times every delivery of one big group's messages to "
            "its members' live streams; --scenario presence measures heartbeats/s with their "
            "Redis cost, and the fan-out of presence changes to allowed and hidden subscribers; "
            "--scenario media measures upload and download MB/s through svc_media beside bare "
            "presigned requests to the same object store; --scenario history measures pages of "
            "50 from the hot and the cold tier and the archiver beside a bare pyarrow write; "
            "--scenario search measures queries through svc_search's blind index beside a "
            "bare indexed MongoDB read of the same postings, and the SDK's on-device index; "
            "--scenario regions (with --start) starts regions eu and us joined by fault "
            "proxies at an injected RTT and measures cross-region send to delivery, forwarded "
            "and replicated, beside a bare gRPC ping through the same proxy, and the "
            "replication lag under sustained sends."
        ),
    )
    where = bench.add_argument_group("which stack")
    where.add_argument(
        "--start",
        action="store_true",
        help="start a fresh local stack on free ports in a temp dir and stop it at the end",
    )
    where.add_argument(
        "--message-instances",
        type=positive_int,
        default=1,
        metavar="N",
        help="svc_message instances of the stack started by --start (default: 1)",
    )
    where.add_argument(
        "--keys-target",
        type=local_target,
        default="127.0.0.1:7101",
        help="svc_keys of a running stack (default: 127.0.0.1:7101, as `parley up`)",
    )
    where.add_argument(
        "--message-target",
        type=local_target,
        action="append",
        dest="message_targets",
        metavar="HOST:PORT",
        help="svc_message of a running stack; repeat for several (default: 127.0.0.1:7102)",
    )
    where.add_argument(
        "--presence-target",
        type=local_target,
        default="127.0.0.1:7103",
        help="svc_presence of a running stack (default: 127.0.0.1:7103)",
    )
    where.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".parley"),
        help="data dir of the running `parley up`, to find SecantusDB's and Redis's ports "
        "for CPU accounting and Redis for command counts (default: ./.parley)",
    )
    where.add_argument(
        "--pid",
        action="append",
        default=[],
        type=name_pid,
        metavar="NAME=PID",
        help="account CPU of this process under NAME (repeatable; overrides discovery)",
    )
    bench.add_argument(
        "--scenario",
        choices=["messaging", "group", "presence", "media", "history", "search", "regions"],
        default="messaging",
        help="messaging: sends, delivery and fetch over direct conversations (default); "
        "group: send-to-delivery time on every live stream of one big group; "
        "presence: heartbeats/s and their Redis cost, fan-out of presence changes; "
        "media: upload and download MB/s through svc_media beside bare presigned S3 requests; "
        "history: pages of 50 from hot and cold history, the archiver beside bare pyarrow; "
        "search: blind-index queries through svc_search beside a bare MongoDB read, and the "
        "SDK's on-device index; "
        "regions: cross-region send to delivery and replication lag at an injected RTT "
        "(needs --start)",
    )
    load = bench.add_argument_group("load")
    load.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SECONDS[1]:g} s phases after {QUICK_SECONDS[0]:g} s warm-up "
        f"(default: {FULL_SECONDS[1]:g} s after {FULL_SECONDS[0]:g} s)",
    )
    load.add_argument("--warmup", type=seconds, metavar="S", help="warm-up seconds per phase")
    load.add_argument(
        "--duration", type=positive_seconds, metavar="S", help="measured seconds per phase"
    )
    load.add_argument(
        "--concurrency",
        type=positive_int,
        default=64,
        metavar="C",
        help="closed-loop senders (presence: heartbeat callers), and baseline unary callers "
        "(default: 64)",
    )
    load.add_argument(
        "--pairs",
        type=positive_int,
        default=32,
        metavar="P",
        help="direct conversations; 2P users, each one device with one stream (default: 32)",
    )
    load.add_argument(
        "--readers", type=positive_int, default=16, metavar="R", help="fetch readers (default: 16)"
    )
    load.add_argument(
        "--fetch-conversations",
        type=positive_int,
        metavar="N",
        help="conversations the readers read, each prefilled to 50 messages (default: all)",
    )
    load.add_argument(
        "--body-bytes",
        type=positive_int,
        default=100,
        metavar="B",
        help="message body size (default: 100, at least 30)",
    )
    load.add_argument(
        "--deliver-rate",
        type=positive_float,
        metavar="PER_S",
        help="offered rate of the deliver phase (default: half the measured send rate)",
    )
    load.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of this client, the baseline server and a --start stack "
        "(default: uvloop, as the services)",
    )
    group = bench.add_argument_group("group scenario")
    group.add_argument(
        "--group-members",
        type=group_size,
        default=MAX_GROUP_MEMBERS,
        metavar="N",
        help=f"members of the group, owner included (default and most: {MAX_GROUP_MEMBERS})",
    )
    group.add_argument(
        "--group-streams",
        type=positive_int,
        metavar="S",
        help="members with a live stream, the owner first (default: every member)",
    )
    group.add_argument(
        "--group-messages",
        type=positive_int,
        metavar="M",
        help=f"measured messages (default: {FULL_GROUP_MESSAGES}, --quick {QUICK_GROUP_MESSAGES})",
    )
    group.add_argument(
        "--group-rate",
        type=positive_float,
        default=5.0,
        metavar="PER_S",
        help="the owner's sends per second (default: 5)",
    )
    group.add_argument(
        "--group-channels",
        type=positive_int,
        default=4,
        metavar="K",
        help="gRPC channels (connections) per svc_message target for the streams (default: 4)",
    )
    group.add_argument(
        "--group-no-ack",
        action="store_false",
        dest="group_ack",
        help="streams never ack (no delivered watermarks, device positions or group receipts "
        "follow): isolates the send and the push from the ack-driven writes",
    )
    presence = bench.add_argument_group("presence scenario")
    presence.add_argument(
        "--presence-users",
        type=positive_int,
        metavar="N",
        help="users; all but the watched one heartbeat "
        f"(default: {FULL_PRESENCE[0]}, --quick {QUICK_PRESENCE[0]})",
    )
    presence.add_argument(
        "--presence-subscribers",
        type=positive_int,
        metavar="S",
        help="users subscribed to the watched user's presence "
        f"(default: {FULL_PRESENCE[1]}, --quick {QUICK_PRESENCE[1]}; fewer than N)",
    )
    presence.add_argument(
        "--presence-allowed",
        type=fraction,
        default=0.5,
        metavar="F",
        dest="presence_allowed_fraction",
        help="share of the subscribers on the watched user's contact list, who may see it "
        "(default: 0.5)",
    )
    presence.add_argument(
        "--presence-toggles",
        type=positive_int,
        metavar="K",
        help="measured online/offline toggles of the watched user, two changes each "
        f"(default: {FULL_PRESENCE[2]}, --quick {QUICK_PRESENCE[2]})",
    )
    presence.add_argument(
        "--presence-channels",
        type=positive_int,
        default=4,
        metavar="K",
        help="gRPC channels (connections) to svc_presence for heartbeats and subscriptions, "
        "and to the baseline server (default: 4)",
    )
    media = bench.add_argument_group("media scenario")
    media.add_argument(
        "--media-target",
        type=local_target,
        default="127.0.0.1:7104",
        help="svc_media of a running stack (default: 127.0.0.1:7104); the object store and "
        "its keys come from --data-dir/parley.yaml",
    )
    media.add_argument(
        "--media-sizes",
        type=sizes_mib,
        default=DEFAULT_MEDIA_SIZES_MIB,
        metavar="MIB[,MIB...]",
        help="file sizes in MiB, each measured in its own phases (default: 1,16)",
    )
    media.add_argument(
        "--media-concurrency",
        type=positive_int,
        default=4,
        metavar="W",
        help="closed-loop workers per phase, one account each, for svc_media and the bare "
        "store alike (default: 4)",
    )
    media.add_argument(
        "--media-rounds",
        type=positive_int,
        metavar="R",
        help="turns each phase's window is cut into, bare and svc_media alternating, so that "
        f"other work on the machine falls on both alike (default: {FULL_MEDIA_ROUNDS}, "
        "--quick 1)",
    )
    tiers = bench.add_argument_group("history scenario")
    tiers.add_argument(
        "--history-conversations",
        type=positive_int,
        metavar="C",
        help="direct conversations of the dataset "
        f"(default: {FULL_HISTORY[0]}, --quick {QUICK_HISTORY[0]})",
    )
    tiers.add_argument(
        "--history-messages",
        type=history_messages,
        metavar="M",
        help="messages sent in each, aged over eight weeks so about half is archived "
        f"(default: {FULL_HISTORY[1]}, --quick {QUICK_HISTORY[1]}; at least 200)",
    )
    tiers.add_argument(
        "--history-readers",
        type=positive_int,
        default=4,
        metavar="R",
        help="closed-loop readers of each read phase, and baseline unary callers (default: 4)",
    )
    tiers.add_argument(
        "--history-seed",
        type=int,
        default=17,
        metavar="N",
        help="seed of the dataset (bodies, ages) and of the pages read (default: 17)",
    )
    search = bench.add_argument_group("search scenario")
    search.add_argument(
        "--search-target",
        type=local_target,
        default="127.0.0.1:7105",
        help="svc_search of a running stack (default: 127.0.0.1:7105); its database comes "
        "from --data-dir/parley.yaml",
    )
    search.add_argument(
        "--search-postings",
        type=positive_int,
        metavar="N",
        help=f"postings loaded for the searched conversation (default: {FULL_SEARCH[0]:,}, "
        f"--quick {QUICK_SEARCH[0]:,})",
    )
    search.add_argument(
        "--search-callers",
        type=positive_int,
        default=4,
        metavar="Q",
        help="closed-loop query callers, for svc_search and the bare read alike (default: 4)",
    )
    search.add_argument(
        "--search-local-messages",
        type=positive_int,
        metavar="N",
        help=f"messages in the SDK's on-device index (default: {FULL_SEARCH[2]:,}, "
        f"--quick {QUICK_SEARCH[2]:,})",
    )
    regions = bench.add_argument_group("regions scenario")
    regions.add_argument(
        "--regions-rtt-ms",
        type=rtt_ms,
        default=80.0,
        metavar="MS",
        help="round-trip time injected on the proxies between eu and us, both ways (default: 80)",
    )
    regions.add_argument(
        "--regions-pings",
        type=positive_int,
        metavar="N",
        help="health Checks per path, straight and through the proxy "
        f"(default: {FULL_REGIONS[0]}, --quick {QUICK_REGIONS[0]})",
    )
    regions.add_argument(
        "--regions-messages",
        type=positive_int,
        metavar="M",
        help="measured messages of the in-region and of the cross-region case "
        f"(default: {FULL_REGIONS[1]}, --quick {QUICK_REGIONS[1]})",
    )
    regions.add_argument(
        "--regions-rate",
        type=positive_float,
        default=10.0,
        metavar="PER_S",
        help="sends per second of those two cases (default: 10)",
    )
    regions.add_argument(
        "--regions-load-rate",
        type=positive_float,
        metavar="PER_S",
        help="paced sends per second at eu to groups with a member in us "
        f"(default: {FULL_REGIONS[2]:g}, --quick {QUICK_REGIONS[2]:g})",
    )
    regions.add_argument(
        "--regions-load-seconds",
        type=positive_seconds,
        metavar="S",
        help=f"seconds of that load (default: {FULL_REGIONS[3]:g}, --quick {QUICK_REGIONS[3]:g})",
    )
    regions.add_argument(
        "--regions-load-groups",
        type=positive_int,
        default=16,
        metavar="G",
        help="eu-owned groups the load is spread over, each with one member in us (default: 16)",
    )
    out = bench.add_argument_group("output")
    out.add_argument("--json", type=Path, dest="json_path", metavar="PATH", help="write the report")
    out.add_argument(
        "--profile",
        action="store_true",
        help="py-spy svc_message during the send phase; SVG and speedscope files go next "
        "to the JSON (or the current directory)",
    )
    out.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, database) after the run"
    )
    history = bench.add_argument_group("history and comparison")
    history.add_argument(
        "--history",
        type=Path,
        dest="history_path",
        metavar="PATH",
        help="the run history each run is appended to, one JSON object per line "
        "(default: bench/results/history.jsonl of this checkout)",
    )
    history.add_argument(
        "--no-history", action="store_true", help="do not append this run to the history"
    )
    history.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="run nothing: print what moved from run A to run B, each a JSON report or a "
        "history entry (history:-1 the newest, history:-2, history:0 the oldest)",
    )
    history.add_argument(
        "--threshold",
        type=positive_float,
        default=10.0,
        metavar="PCT",
        help="--compare flags changes beyond this many percent (default: 10)",
    )
    bench.set_defaults(func=run_command)
    return bench


def run_command(args: argparse.Namespace) -> int:
    if args.compare:
        return compare_command(args)
    # Imported here so that `parley --help` and the client commands do not load
    # grpc, pymongo and the stack.
    from parley_dev.bench.config import BenchConfig
    from parley_dev.bench.history import DEFAULT_HISTORY
    from parley_dev.bench.population import MIN_BODY_BYTES
    from parley_dev.bench.scenarios import run_bench

    if args.body_bytes < MIN_BODY_BYTES:
        raise SystemExit(f"parley bench: --body-bytes must be at least {MIN_BODY_BYTES}")
    fetch = args.fetch_conversations or args.pairs
    if fetch > args.pairs:
        raise SystemExit("parley bench: --fetch-conversations cannot exceed --pairs")
    warmup, duration = QUICK_SECONDS if args.quick else FULL_SECONDS
    history_default = QUICK_HISTORY if args.quick else FULL_HISTORY
    users, subscribers, toggles = QUICK_PRESENCE if args.quick else FULL_PRESENCE
    postings, by_rpc, local_messages = QUICK_SEARCH if args.quick else FULL_SEARCH
    pings, region_messages, load_rate, load_seconds = QUICK_REGIONS if args.quick else FULL_REGIONS
    users = args.presence_users or users
    subscribers = args.presence_subscribers or min(subscribers, users - 1)
    if args.scenario == "presence":
        if subscribers >= users:
            raise SystemExit("parley bench: --presence-subscribers must be below --presence-users")
        if round(subscribers * args.presence_allowed_fraction) > MAX_CONTACTS:
            raise SystemExit(f"parley bench: at most {MAX_CONTACTS} allowed subscribers")
    config = BenchConfig(
        start=args.start,
        keys_target=args.keys_target,
        message_targets=tuple(args.message_targets or ["127.0.0.1:7102"]),
        message_instances=args.message_instances,
        data_dir=args.data_dir,
        loop=args.loop,
        quick=args.quick,
        concurrency=args.concurrency,
        pairs=args.pairs,
        readers=args.readers,
        fetch_conversations=fetch,
        body_bytes=args.body_bytes,
        warmup_s=warmup if args.warmup is None else args.warmup,
        duration_s=duration if args.duration is None else args.duration,
        deliver_rate=args.deliver_rate,
        json_path=args.json_path,
        profile=args.profile,
        keep=args.keep,
        pids=dict(args.pid),
        scenario=args.scenario,
        group_members=args.group_members,
        group_streams=args.group_streams or args.group_members,
        group_messages=args.group_messages
        or (QUICK_GROUP_MESSAGES if args.quick else FULL_GROUP_MESSAGES),
        group_rate=args.group_rate,
        group_channels=args.group_channels,
        group_ack=args.group_ack,
        presence_target=args.presence_target,
        presence_users=users,
        presence_subscribers=subscribers,
        presence_allowed_fraction=args.presence_allowed_fraction,
        presence_toggles=args.presence_toggles or toggles,
        presence_channels=args.presence_channels,
        media_target=args.media_target,
        media_sizes=tuple(int(mib * MIB) for mib in args.media_sizes),
        media_concurrency=args.media_concurrency,
        media_rounds=args.media_rounds or (1 if args.quick else FULL_MEDIA_ROUNDS),
        history_conversations=args.history_conversations or history_default[0],
        history_messages=args.history_messages or history_default[1],
        history_readers=args.history_readers,
        history_seed=args.history_seed,
        search_target=args.search_target,
        search_postings=args.search_postings or postings,
        search_indexed_by_rpc=by_rpc,
        search_callers=args.search_callers,
        search_rounds=1 if args.quick else FULL_MEDIA_ROUNDS,
        search_local_messages=args.search_local_messages or local_messages,
        regions_rtt_ms=args.regions_rtt_ms,
        regions_pings=args.regions_pings or pings,
        regions_messages=args.regions_messages or region_messages,
        regions_rate=args.regions_rate,
        regions_load_groups=args.regions_load_groups,
        regions_load_rate=args.regions_load_rate or load_rate,
        regions_load_seconds=args.regions_load_seconds or load_seconds,
        history_path=None if args.no_history else (args.history_path or DEFAULT_HISTORY),
    )
    return run_bench(config)


def compare_command(args: argparse.Namespace) -> int:
    from parley_dev.bench.compare import compare_runs, render_comparison
    from parley_dev.bench.history import DEFAULT_HISTORY, RunNotFound, load_run

    history_path = args.history_path or DEFAULT_HISTORY
    try:
        (label_a, run_a), (label_b, run_b) = (load_run(ref, history_path) for ref in args.compare)
    except RunNotFound as exc:
        raise SystemExit(f"parley bench --compare: {exc}") from None
    rows = compare_runs(run_a, run_b, threshold_pct=args.threshold)
    if not rows:
        raise SystemExit("parley bench --compare: the two runs have no figure in common")
    print(render_comparison((label_a, label_b), (run_a, run_b), rows, threshold_pct=args.threshold))
    return 0
