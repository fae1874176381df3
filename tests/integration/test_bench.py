"""`parley bench` end to end: a fresh stack, every phase, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from parley_dev.bench.baseline import BaselineServer, push_phase, unary_phase
from parley_dev.bench.group_report import GROUP_HEADLINE_KEYS
from parley_dev.bench.load import Window
from parley_dev.bench.presence_report import PRESENCE_HEADLINE_KEYS
from parley_dev.bench.report import HEADLINE_KEYS

# The whole --start --quick run takes about 35 s on an idle 2-core machine.
RUN_TIMEOUT_SECONDS = 170
STACK_PROCESSES = {"secantusdb", "redis", "svc_keys", "svc_message-0", "bench_client"}
STACK_PHASES = ("setup", "send", "deliver", "fetch")


@pytest.mark.slow
def test_quick_bench_on_a_fresh_stack_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench"),
            *("--start", "--quick", "--duration", "2.5", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "targets:" in run.stdout and "baseline (bare gRPC)" in run.stdout
    report = json.loads(out.read_text())

    for key in HEADLINE_KEYS:
        assert isinstance(report[key], int | float), key
        assert report[key] > 0, key
    for name in ("send_ack", "deliver", "fetch_recent"):
        assert report[f"{name}_p99_ms"] >= report[f"{name}_p50_ms"], name
    assert report["baseline_unary_p99_ms"] >= report["baseline_unary_p50_ms"]
    assert all(r is not None and r > 0 for r in report["ratios"].values())
    assert [t["verdict"] in ("PASS", "MISS") for t in report["targets"]] == [True] * 4

    machine, params = report["machine"], report["parameters"]
    assert {"cores", "python", "grpcio", "platform"} <= machine.keys()
    assert machine["cores"] >= 1 and machine["grpcio"] == grpc.__version__
    assert params["concurrency"] == params["baseline_unary_callers"] == 64
    assert params["pairs"] == 32 and params["users"] == 64 and params["readers"] == 16
    assert params["loop"] == "uvloop" and params["started_stack"] is True
    assert params["duration_s"] == 2.5 and params["warmup_s"] == 0.5

    cpu = report["cpu_seconds"]
    for phase in STACK_PHASES:
        assert cpu[phase].keys() >= STACK_PROCESSES, phase
        assert all(v is not None and v >= 0 for v in cpu[phase].values()), phase
    # Sending is durable writes: the database and svc_message must have worked.
    assert cpu["send"]["secantusdb"] > 0 and cpu["send"]["svc_message-0"] > 0
    assert cpu["baseline_unary"]["baseline_server"] > 0

    deliver = report["phases"]["deliver"]
    assert deliver["offered_rps"] == pytest.approx(report["send_rps"] / 2, rel=0.01, abs=1)
    assert deliver["acked"] > 0 and deliver["arrived"] == deliver["acked"]
    assert deliver["missing"] == 0 and deliver["duplicates"] == 0
    assert report["phases"]["fetch"]["errors"] == {}
    assert report["stream_errors"] == []
    assert report["complete"] is True
    # Each send reaches the recipient's stream and the sender's own: twice the sends.
    assert report["deliver_msgs_per_s"] == pytest.approx(2 * report["send_rps"], rel=0.25)


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


@pytest.mark.slow
def test_quick_group_bench_times_every_delivery(tmp_path: Path) -> None:
    members, messages = 64, 20
    out = tmp_path / "group.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "parley_dev.cli", "bench", "--scenario", "group"),
            *("--start", "--quick", "--duration", "1", "--json", str(out)),
            *("--group-members", str(members), "--group-messages", str(messages)),
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
