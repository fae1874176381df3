"""`parley bench` end to end: a fresh stack, every phase, the JSON report, its
targets and the run history (in a temp dir: CI never writes into the checkout);
and `--compare` of two small reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from parley_dev.bench.baseline import BaselineServer, push_phase, unary_phase
from parley_dev.bench.group_report import GROUP_HEADLINE_KEYS
from parley_dev.bench.load import Window
from parley_dev.bench.presence_report import PRESENCE_HEADLINE_KEYS
from parley_dev.bench.report import HEADLINE_KEYS
from parley_dev.bench.thin_durable import (
    COLLECTION,
    DATABASE,
    running_thin_durable,
    thin_durable_phase,
    thin_durable_stats,
)
from parley_dev.stack import LocalStack

# The whole --start --quick run takes about 35 s on an idle 2-core machine.
RUN_TIMEOUT_SECONDS = 170
SEARCH_RUN_TIMEOUT_SECONDS = 400
STACK_PROCESSES = {"secantusdb", "redis", "svc_keys", "svc_message-0", "bench_client"}
STACK_PHASES = ("setup", "thin_durable", "send", "deliver", "fetch")
TARGET_KEYS = {"name", "value", "limit", "comparison", "unit", "verdict"}


def assert_targets(report: dict[str, Any], names: set[str]) -> None:
    """The scenario's targets, each judged: every figure they need was measured."""
    targets = report["targets"]
    assert {t["name"] for t in targets} == names
    for target in targets:
        assert target.keys() >= TARGET_KEYS, target
        assert target["comparison"] in ("<=", ">=") and isinstance(target["limit"], float)
        assert isinstance(target["value"], int | float), target
        assert target["verdict"] in ("PASS", "MISS"), target


@pytest.mark.slow
def test_quick_bench_on_a_fresh_stack_writes_every_figure(tmp_path: Path) -> None:
    out, history = tmp_path / "bench.json", tmp_path / "results" / "history.jsonl"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench"),
            # 1.5 s phases (not --quick's 3) pay for the thin durable phase and its server.
            *("--start", "--quick", "--duration", "1.5", "--json", str(out)),
            *("--history", str(history)),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "targets:" in run.stdout and "baseline (bare gRPC)" in run.stdout
    assert "thin durable" in run.stdout
    report = json.loads(out.read_text())
    assert report["scenario"] == "messaging"

    for key in HEADLINE_KEYS:
        assert isinstance(report[key], int | float), key
        assert report[key] > 0, key
    for name in ("send_ack", "deliver", "fetch_recent"):
        assert report[f"{name}_p99_ms"] >= report[f"{name}_p50_ms"], name
    assert report["baseline_unary_p99_ms"] >= report["baseline_unary_p50_ms"]
    assert all(r is not None and r > 0 for r in report["ratios"].values())
    assert report["thin_durable_p99_ms"] >= report["thin_durable_p50_ms"]
    assert report["ratios"]["send_rps / thin_durable_rps"] == pytest.approx(
        report["send_rps"] / report["thin_durable_rps"], rel=0.01
    )
    assert_targets(
        report,
        {
            "send_rps / thin_durable_rps",
            "send_ack_p99_ms / thin_durable_p99_ms",
            "deliver_p99_ms",
            "fetch_recent_p50_ms",
            "fetch_recent_p99_ms",
        },
    )
    thin = report["phases"]["thin_durable"]
    assert thin["errors"] == {} and thin["batches"] > 0
    # Group commit: 64 callers share batches.
    assert thin["documents_per_batch"] > 1

    machine, params = report["machine"], report["parameters"]
    assert {"cores", "python", "grpcio", "platform"} <= machine.keys()
    assert machine["cores"] >= 1 and machine["grpcio"] == grpc.__version__
    assert params["concurrency"] == params["baseline_unary_callers"] == 64
    assert params["pairs"] == 32 and params["users"] == 64 and params["readers"] == 16
    assert params["loop"] == "uvloop" and params["started_stack"] is True
    assert params["duration_s"] == 1.5 and params["warmup_s"] == 0.5
    assert params["thin_durable_callers"] == 64
    assert params["thin_durable_payload_bytes"] == params["baseline_unary_payload_bytes"]

    cpu = report["cpu_seconds"]
    for phase in STACK_PHASES:
        assert cpu[phase].keys() >= STACK_PROCESSES, phase
        assert all(v is not None and v >= 0 for v in cpu[phase].values()), phase
    # Sending is durable writes: the database and svc_message must have worked.
    assert cpu["send"]["secantusdb"] > 0 and cpu["send"]["svc_message-0"] > 0
    assert cpu["baseline_unary"]["baseline_server"] > 0
    assert cpu["thin_durable"]["thin_durable_server"] > 0 and cpu["thin_durable"]["secantusdb"] > 0
    # Every send is one inserted document, whatever the batching; the
    # figures the report gives per send come from svc_message's counters.
    for phase in ("send", "deliver"):
        inserted = report["db_writes_per_send"][phase]["messages/insert"]
        assert inserted["documents"] == pytest.approx(1.0, abs=0.05), phase
        assert 0 < inserted["commands"] <= 1.0, phase
    assert "database writes per send" in run.stdout

    deliver = report["phases"]["deliver"]
    assert deliver["offered_rps"] == pytest.approx(report["send_rps"] / 2, rel=0.01, abs=1)
    assert deliver["acked"] > 0 and deliver["arrived"] == deliver["acked"]
    assert deliver["missing"] == 0 and deliver["duplicates"] == 0
    assert report["phases"]["fetch"]["errors"] == {}
    assert report["stream_errors"] == []
    assert report["complete"] is True
    # Each send reaches the recipient's stream and the sender's own: twice the sends.
    assert report["deliver_msgs_per_s"] == pytest.approx(2 * report["send_rps"], rel=0.25)

    (line,) = history.read_text().splitlines()
    entry = json.loads(line)
    assert entry["scenario"] == "messaging" and entry["run"] == "quick"
    assert entry["figures"]["thin_durable_rps"] == report["thin_durable_rps"]
    assert entry["targets"] == report["targets"] and entry["json"] == str(out)
    assert entry["machine"]["cpu_count"] >= 1 and len(entry["git"]["commit"]) == 40


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_baseline_server_answers_unary_and_push(tmp_path: Path, loop: str) -> None:
    server = BaselineServer(work_dir=tmp_path, loop="asyncio" if loop == "asyncio" else "uvloop")
    async with grpc.aio.insecure_channel(server.target) as channel:
        await server.start(channel)
        try:
            unary = await unary_phase(
                channel, callers=4, payload_bytes=100, window=Window.after(0.1, 0.4)
            )
            push = await push_phase(
                channel, streams=3, payload_bytes=200, window=Window.after(0.1, 0.4)
            )
        finally:
            await server.stop()
    assert not server.process.alive()
    assert unary.completed > 0 and not unary.errors
    assert unary.latency.p50_ms is not None and unary.latency.p50_ms > 0
    assert push.completed > 0 and not push.errors


async def test_thin_durable_server_group_commits_durably_and_drops_its_database(
    tmp_path: Path, stack: LocalStack
) -> None:
    async with running_thin_durable(
        work_dir=tmp_path, loop="uvloop", mongo_uri=stack.mongo_uri
    ) as (server, channel):
        result = await thin_durable_phase(
            channel, callers=16, payload_bytes=120, window=Window.after(0.2, 0.5)
        )
        stats = await thin_durable_stats(channel)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri)
        try:
            stored = await client[DATABASE][COLLECTION].count_documents({})
            assert await client[DATABASE][COLLECTION].find_one({"payload": b"\x5a" * 120})
            assert result.completed > 0 and not result.errors
            # Every acked call is stored; batches hold several of the 16 callers' calls.
            assert stored == stats["documents"] >= result.completed
            assert stats["documents"] > stats["batches"] > 0
        finally:
            await client.close()
    # SIGTERM stopped it cleanly, and it dropped its database on the way out.
    assert server.process.returncode == 0, server.process.log_tail()
    client = AsyncMongoClient(stack.mongo_uri)
    try:
        assert DATABASE not in await client.list_database_names()
        assert "parley" in await client.list_database_names()
    finally:
        await client.close()


@pytest.mark.slow
def test_quick_group_bench_times_every_delivery(tmp_path: Path) -> None:
    members, messages = 64, 20
    out = tmp_path / "group.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "group"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--group-members", str(members), "--group-messages", str(messages)),
            "--no-history",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "send to delivery p50 / p99 ms" in run.stdout and "push msgs/s" in run.stdout
    report = json.loads(out.read_text())

    assert report["scenario"] == "group" and report["complete"] is True
    assert_targets(report, {"group_deliver_p99_ms"})
    # 64 members, not the target's 1024: judged, and said so.
    assert "group_members=64" in report["targets"][0]["caveat"]
    for key in GROUP_HEADLINE_KEYS:
        assert isinstance(report[key], int | float) and report[key] > 0, key
    for name in ("group_deliver", "group_deliver_last_stream", "group_send_ack"):
        assert report[f"{name}_p99_ms"] >= report[f"{name}_p50_ms"], name
    # Every message reached every stream (the owner's own device included), once.
    send = report["phases"]["group_send"]
    assert send["acked"] == messages and send["streams"] == members
    assert report["group_deliver_count"] == send["expected_deliveries"] == messages * members
    assert send["missing"] == 0 and send["duplicates"] == 0 and send["shed"] == 0
    assert send["events_per_server_event"]["max"] >= 1
    # CPU per delivered event, beside the bare push server's per message.
    assert report["group_cpu_us_per_event"] > 0
    assert report["baseline_push_cpu_us_per_msg"] > 0
    assert send["db_documents_written"]["messages/insert"] > 0
    assert report["stream_errors"] == [] and report["warnings"] == []
    params = report["parameters"]
    assert params["group_members"] == params["streams"] == params["baseline_push_streams"]
    assert report["cpu_seconds"]["group_send"].keys() >= STACK_PROCESSES


@pytest.mark.slow
def test_quick_presence_bench_measures_heartbeats_and_where_changes_go(tmp_path: Path) -> None:
    users, subscribers, toggles = 60, 20, 3
    out = tmp_path / "presence.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "presence"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--presence-users", str(users), "--presence-subscribers", str(subscribers)),
            *("--presence-toggles", str(toggles)),
            "--no-history",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "heartbeats/s sustained" in run.stdout and "unary rps" in run.stdout
    report = json.loads(out.read_text())

    assert report["scenario"] == "presence" and report["complete"] is True
    assert report["failed_checks"] == [] and report["warnings"] == []
    assert {c["verdict"] for c in report["checks"]} == {"PASS"}
    assert_targets(
        report,
        {
            "presence_heartbeats_per_s / baseline_unary_rps",
            "presence_redis_scripts_per_heartbeat",
            "presence_online_change_p99_ms",
            "presence_offline_change_p99_ms",
        },
    )
    for key in PRESENCE_HEADLINE_KEYS:
        assert isinstance(report[key], int | float), key
    assert report["presence_heartbeats_per_s"] > 0 and report["baseline_unary_rps"] > 0
    assert report["presence_heartbeat_p99_ms"] >= report["presence_heartbeat_p50_ms"] > 0
    assert report["phases"]["heartbeat"]["errors"] == {}
    # Half the subscribers may see the watched user: every change reaches those
    # 10, once each, through one PUBLISH, and none of the other 10.
    allowed = subscribers // 2
    fanout = report["phases"]["fanout"]
    assert fanout["allowed_subscribers"] == fanout["hidden_subscribers"] == allowed
    assert fanout["measured_changes"] == 2 * toggles
    assert report["presence_change_deliveries"] == 2 * toggles * allowed
    assert report["presence_hidden_deliveries"] == 0
    assert report["presence_events_per_change"] == allowed
    assert report["presence_publishes_per_change"] == pytest.approx(1.0, abs=0.05)
    assert fanout["snapshots"]["hidden"] == {"AVAILABILITY_UNSPECIFIED": allowed}
    # One script call each; the idle background subtracted from the count is
    # an estimate, so allow a little noise either way.
    assert report["presence_redis_scripts_per_heartbeat"] == pytest.approx(1.0, abs=0.05)
    cpu = report["cpu_seconds"]
    assert cpu["heartbeat"].keys() >= {"svc_presence", "redis", "bench_client"}
    assert cpu["heartbeat"]["svc_presence"] > 0
    params = report["parameters"]
    assert params["users"] == users and params["subscribers"] == subscribers
    assert params["baseline_unary_callers"] == params["concurrency"] == 64


def test_compare_prints_what_moved_between_two_reports(tmp_path: Path) -> None:
    def report(send_rps: float, fetch_p50_ms: float, verdict: str) -> dict[str, Any]:
        return {
            "scenario": "messaging",
            "send_rps": send_rps,
            "fetch_recent_p50_ms": fetch_p50_ms,
            "ratios": {},
            "targets": [
                {
                    "name": "fetch_recent_p50_ms",
                    "value": fetch_p50_ms,
                    "limit": 5.0,
                    "comparison": "<=",
                    "unit": "ms",
                    "verdict": verdict,
                }
            ],
            "parameters": {"quick": True},
        }

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report(1000.0, 4.0, "PASS")))
    b.write_text(json.dumps(report(1050.0, 6.0, "MISS")))
    run = subprocess.run(
        [sys.executable, "-m", "parley_dev.cli", "bench", "--compare", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.startswith("  ")}
    assert "+5.0%" in lines["send_rps"] and "<<" not in lines["send_rps"]
    assert "+50.0%  << worse  PASS -> MISS !" in lines["fetch_recent_p50_ms"]


@pytest.mark.slow
def test_quick_media_bench_puts_svc_media_beside_the_bare_store(tmp_path: Path) -> None:
    out = tmp_path / "media.json"
    # A quarter MiB (one PUT) and 9 MiB (two parts): both upload paths, little data.
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "media"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--media-sizes", "0.25,9", "--media-concurrency", "2"),
            "--no-history",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "upload+complete MB/s" in run.stdout and "bare S3 (presigned)" in run.stdout
    report = json.loads(out.read_text())

    assert report["scenario"] == "media" and report["complete"] is True
    assert report["warnings"] == []
    labels = ("262144b", "9mib")
    assert_targets(
        report,
        {
            f"media_{kind}_{label}_mb_per_s / bare_{bare}_{label}_mb_per_s"
            for label in labels
            for kind, bare in (("upload", "put"), ("download", "get"))
        },
    )
    assert "sizes=" in report["targets"][0]["caveat"]
    for label in labels:
        for kind in ("bare_put", "media_upload", "bare_get", "media_download"):
            phase = report["phases"][f"{kind}_{label}"]
            assert phase["errors"] == {} and phase["completed"] > 0, (kind, label)
            assert report[f"{kind}_{label}_mb_per_s"] > 0
            assert phase["cpu_ms_per_op"].keys() >= {"svc_media", "seaweedfs", "bench_client"}
        for step in ("create_upload", "complete_upload", "get_download"):
            assert report[f"media_{step}_{label}_p99_ms"] >= report[f"media_{step}_{label}_p50_ms"]
    assert report["phases"]["media_upload_262144b"]["parts_per_upload"] == 1
    assert report["phases"]["media_upload_9mib"]["parts_per_upload"] == 2
    # svc_media did the work of its phases, and none of the bare ones' RPCs.
    cpu = report["cpu_seconds"]
    assert cpu["media_upload_9mib"]["svc_media"] > 0 and cpu["bare_put_9mib"]["seaweedfs"] > 0
    params = report["parameters"]
    assert params["concurrency"] == params["users"] == 2
    assert params["sizes_bytes"] == [262144, 9 << 20]


@pytest.mark.slow
def test_quick_history_bench_reads_both_tiers_and_times_the_archiver(tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    # Two conversations of 200 messages: both tiers hold full pages, little to send.
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "history"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--history-conversations", "2", "--history-messages", "200"),
            "--no-history",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "page of 50 from cold, backward" in run.stdout and "unary rps" in run.stdout
    report = json.loads(out.read_text())

    assert report["scenario"] == "history" and report["complete"] is True
    assert report["warnings"] == []
    assert_targets(
        report,
        {
            *(f"history_{t}_{d}_p99_ms" for t in ("hot", "cold") for d in ("backward", "forward")),
            "archiver_messages_per_s / bare_pyarrow_messages_per_s",
        },
    )
    for read in ("hot_backward", "cold_backward", "hot_forward", "cold_forward"):
        phase = report["phases"][read]
        assert phase["errors"] == {} and phase["completed"] > 0, read
        assert report[f"history_{read}_p99_ms"] >= report[f"history_{read}_p50_ms"] > 0
    # The archiver moved exactly the rows the bare write wrote, the older part.
    archive, bare = report["phases"]["archive"], report["phases"]["bare_write"]
    assert archive["rows"] == bare["rows"] == report["archived_rows"] > 0
    assert archive["objects"] == bare["objects"] >= 1
    cold, last = report["dataset"].values()
    assert all(50 <= c <= n - 50 for c, n in zip(cold, last, strict=True)), (cold, last)
    assert archive["rows"] >= sum(cold)
    assert list(archive["step_seconds"]) == [
        *("prepared", "written", "verified", "recorded", "advanced", "deleted")
    ]
    # Cold pages are svc_message's work on objects; the archive pass is the bench's.
    cpu = report["cpu_seconds"]
    assert cpu["cold_backward"]["svc_message-0"] > 0 and cpu["archive"]["bench_client"] > 0
    assert report["baseline_unary_rps"] > 0
    params = report["parameters"]
    assert params["recent_cache_messages"] == 0 and params["conversations"] == 2


@pytest.mark.slow
def test_quick_search_bench_puts_svc_search_beside_the_bare_read(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    # A few thousand postings: every step of the scenario, little data.
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "search"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--search-postings", "6000", "--search-local-messages", "1000"),
            "--no-history",
        ],
        capture_output=True,
        text=True,
        timeout=SEARCH_RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "bare MongoDB read" in run.stdout and "where a query's time goes" in run.stdout
    report = json.loads(out.read_text())

    assert report["scenario"] == "search" and report["complete"] is True
    assert report["warnings"] == []
    assert_targets(report, {"search_query_p99_ms", "local_query_p99_ms"})
    assert [t["caveat"] for t in report["targets"]] == [
        "postings=6000 (target: 1000000)",
        "local_messages=1000 (target: 100000)",
    ]
    data = report["dataset"]
    # Both ways in: IndexMessage for some, the bulk for the rest, all stored.
    assert (
        data["postings_stored"] == 6000 == data["postings_by_index_message"] + data["postings_bulk"]
    )
    assert data["postings_by_index_message"] > 0 and data["postings_bulk"] > 0
    for phase in ("search_query", "bare_read", "baseline_unary"):
        assert report["phases"][phase]["errors"] == {} and report["phases"][phase]["completed"] > 0
    assert report["search_query_p99_ms"] >= report["search_query_p50_ms"] > 0
    assert report["bare_read_p99_ms"] >= report["bare_read_p50_ms"] > 0
    # Words the messages hold found them through svc_message's page filter.
    assert report["missed_hits"] == {}
    assert report["empty_pages"].get("no_match", 0) > 0
    assert set(report["by_kind"]["search_query"]) == set(report["parameters"]["query_kinds"])
    where = report["where_the_time_goes"]
    assert where["svc_search_handler_mean_ms"] > 0
    assert where["bare_read_plan"]["stages"] and where["db_step_mean_ms"]["page_of_one_token"] > 0
    assert report["cpu_seconds"]["search_query"]["svc_search"] > 0
    assert report["local_index_msgs_per_s"] > 0 and report["local_index_bytes_per_100k"] > 0
