"""Pure parts of `parley bench`: percentiles, targets, /proc CPU, bodies, drivers, report."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.bench import procstat
from parley_dev.bench.discovery import discover_stack_pids
from parley_dev.bench.flamegraph import parse_collapsed, to_speedscope, to_svg
from parley_dev.bench.load import OpenLoopResult, Window, closed_loop, open_loop
from parley_dev.bench.phases import DeliverOutcome
from parley_dev.bench.population import (
    MIN_BODY_BYTES,
    PHASE_DELIVER,
    PHASE_SEND,
    BodyCodec,
    wire_sizes,
)
from parley_dev.bench.report import HEADLINE_KEYS, Measurements, build_report, render
from parley_dev.bench.stats import (
    half_rate,
    per_second,
    percentile,
    ratio,
    summarize_ns,
)
from parley_dev.bench.streams import DeliveryRecorder
from parley_dev.cli import build_parser
from parley_dev.process import free_port
from tests.bench_loads import load_result

# -- percentiles and summaries ------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    samples = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 100) == 5.0
    assert percentile(samples, 25) == 2.0
    assert percentile([10.0, 20.0], 50) == 15.0
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)


def test_percentile_of_one_sample_and_bad_input() -> None:
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="not in"):
        percentile([1.0], 101)


def test_summary_converts_ns_to_ms_and_sorts() -> None:
    summary = summarize_ns([3_000_000, 1_000_000, 2_000_000])
    assert summary.count == 3
    assert summary.p50_ms == 2.0
    assert summary.max_ms == 3.0
    assert summary.mean_ms == 2.0
    assert summary.p99_ms is not None and summary.p50_ms <= summary.p99_ms <= 3.0


def test_empty_summary_is_all_none() -> None:
    summary = summarize_ns([])
    assert summary.count == 0
    assert summary.p50_ms is None and summary.p99_ms is None
    assert json.dumps(summary.as_dict())  # None, never NaN: stays valid JSON


def test_rates_and_ratios() -> None:
    assert per_second(300, 1.5) == 200.0
    with pytest.raises(ValueError, match="positive"):
        per_second(1, 0)
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert half_rate(400.0) == 200.0
    assert half_rate(0.0) == 1.0


# -- CPU from /proc -------------------------------------------------------------------

# A real line's shape; the command name holds spaces and a ')' on purpose.
STAT = (
    "4242 (svc (message) x) S 1 4242 4242 0 -1 4194560 2915 0 0 0 "
    "150 25 0 0 20 0 13 0 1234 1000000 5000 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0"
)


def test_parse_stat_adds_utime_and_stime_past_an_awkward_command_name() -> None:
    assert procstat.parse_stat_ticks(STAT) == 175
    with pytest.raises(ValueError, match="stat"):
        procstat.parse_stat_ticks("no parenthesis here")
    with pytest.raises(ValueError, match="truncated"):
        procstat.parse_stat_ticks("1 (x) S 1 2")


def test_cpu_seconds_reads_a_proc_tree(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(STAT)
    ticks = procstat.clock_ticks_per_second()
    assert procstat.cpu_seconds(4242, proc=tmp_path) == pytest.approx(175 / ticks)
    assert procstat.cpu_seconds(1, proc=tmp_path) is None
    assert procstat.snapshot({"a": 4242, "gone": 1}, proc=tmp_path) == {
        "a": pytest.approx(175 / ticks),
        "gone": None,
    }


def test_cpu_seconds_of_this_process_grows_with_work() -> None:
    import os

    before = procstat.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = procstat.cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before


def test_cpu_delta_refuses_missing_and_backward_counters() -> None:
    before = {"db": 1.0, "svc": 5.0, "late": None, "restarted": 9.0}
    after = {"db": 3.5, "svc": 5.0, "late": 1.0, "restarted": 0.5, "new": 2.0}
    assert procstat.cpu_delta(before, after) == {
        "db": 2.5,
        "late": None,
        "new": None,
        "restarted": None,
        "svc": 0.0,
    }


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1BBD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1BBE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1BBD 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""


def test_listening_inodes_only_for_listening_sockets_on_wanted_ports() -> None:
    # 0x1BBD = 7101, 0x1BBE = 7102; the third line is an established connection.
    assert procstat.parse_listening_inodes(PROC_NET_TCP, [7101]) == {111: 7101}
    assert procstat.parse_listening_inodes(PROC_NET_TCP, [7101, 7102]) == {
        111: 7101,
        222: 7102,
    }


def test_pids_listening_finds_this_process() -> None:
    import os
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert procstat.pids_listening_on([port]) == {port: os.getpid()}


def test_discovery_finds_listeners_from_targets_and_the_up_config(tmp_path: Path) -> None:
    import os
    import socket

    with socket.socket() as keys, socket.socket() as db:
        for listener in (keys, db):
            listener.bind(("127.0.0.1", 0))
            listener.listen()
        keys_port, db_port = keys.getsockname()[1], db.getsockname()[1]
        silent_port = free_port()
        (tmp_path / "parley.yaml").write_text(
            f"mongo: {{uri: 'mongodb://127.0.0.1:{db_port}/?retryWrites=false'}}\n"
            "redis: {url: 'redis://127.0.0.1:1/0'}\n"
        )
        pids, notes = discover_stack_pids(
            f"127.0.0.1:{keys_port}", [f"127.0.0.1:{silent_port}"], tmp_path
        )
    assert pids == {"svc_keys": os.getpid(), "secantusdb": os.getpid()}
    assert notes == ["no listening process found for redis, svc_message-0: CPU not measured"]
    _pids, notes = discover_stack_pids("127.0.0.1:1", [], tmp_path / "missing")
    assert "CPU of SecantusDB and Redis is not measured" in notes[0]


# -- bodies and arrivals ----------------------------------------------------------------


def test_body_round_trip_and_foreign_bodies() -> None:
    codec = BodyCodec(run=b"abcd", size=100)
    body = codec.encode(phase=PHASE_DELIVER, measured=True, sent_ns=123, serial=7)
    assert len(body) == 100
    header = codec.decode(body)
    assert header is not None
    assert (header.phase, header.measured, header.sent_ns, header.serial) == (
        PHASE_DELIVER,
        True,
        123,
        7,
    )
    assert BodyCodec(run=b"wxyz", size=100).decode(body) is None  # another run
    assert codec.decode(b"hello") is None
    assert codec.decode(b"\x00" * 100) is None
    with pytest.raises(ValueError, match="at least"):
        BodyCodec(run=b"abcd", size=MIN_BODY_BYTES - 1)


def test_wire_sizes_follow_the_body() -> None:
    send, event = wire_sizes(100)
    assert 100 < send < event
    assert wire_sizes(1000)[0] - send == 900 + 1  # the length prefix grows a byte


def _message(codec: BodyCodec, sender: str, serial: int, sent_ns: int = 0) -> mpb.Message:
    return mpb.Message(
        conversation_id="c",
        seq=serial + 1,
        sender_account_id=sender,
        body=codec.encode(phase=PHASE_DELIVER, measured=True, sent_ns=sent_ns, serial=serial),
    )


def test_recorder_times_recipients_only_and_finds_losses_and_duplicates() -> None:
    codec = BodyCodec(run=b"abcd", size=64)
    recorder = DeliveryRecorder(codec)
    recorder.deliver_acked.update({1, 2, 3})
    recorder.on_message("bob", _message(codec, "alice", 1, sent_ns=1_000), arrived_ns=5_000)
    recorder.on_message("alice", _message(codec, "alice", 1), arrived_ns=6_000)  # own copy
    recorder.on_message("bob", _message(codec, "alice", 2, sent_ns=0), arrived_ns=2_000_000)
    recorder.on_message("bob", _message(codec, "alice", 2), arrived_ns=9_000_000)  # again
    send_phase = mpb.Message(
        sender_account_id="alice",
        body=codec.encode(phase=PHASE_SEND, measured=True, sent_ns=0, serial=9),
    )
    recorder.on_message("bob", send_phase, arrived_ns=1)
    recorder.on_message("bob", mpb.Message(sender_account_id="x", body=b"other"), arrived_ns=1)
    assert recorder.message_events == 6
    assert recorder.echo_events == 1
    assert recorder.deliver_latencies_ns == [4_000, 2_000_000]
    assert recorder.duplicates == 1
    assert recorder.deliver_missing == 1  # serial 3 was acked and never arrived
    assert recorder.recipient_arrivals == {PHASE_DELIVER: 3, PHASE_SEND: 1}


# -- load drivers ---------------------------------------------------------------------------


async def test_closed_loop_counts_only_calls_completing_in_the_window() -> None:
    calls: Counter[int] = Counter()

    async def call(worker: int) -> None:
        calls[worker] += 1
        await asyncio.sleep(0.01)
        if worker == 3:
            raise RuntimeError("broken caller")

    marks: list[str] = []

    async def start() -> None:
        marks.append("start")

    async def end() -> None:
        marks.append("end")

    window = Window.after(0.1, 0.3)
    result = await closed_loop(4, call, window=window, on_start=[start], on_end=[end])
    assert marks == ["start", "end"]
    assert result.window_s == pytest.approx(0.3)
    assert 0 < result.completed < sum(calls.values())  # warm-up calls left out
    assert len(result.latencies_ns) == result.completed
    assert min(result.latencies_ns) >= 10_000_000
    assert result.errors["RuntimeError"] > 0
    assert time.perf_counter_ns() >= window.end_ns


async def test_open_loop_offers_the_rate_whatever_the_replies() -> None:
    started = time.perf_counter_ns()
    window = Window(started + 100_000_000, started + 500_000_000)
    measured: list[int] = []

    async def call(serial: int, is_measured: bool) -> None:
        await asyncio.sleep(0.05)  # slow replies must not slow the offered rate
        if is_measured:
            measured.append(serial)

    result = await open_loop(
        200.0, call, window=window, warmup_start_ns=started, max_in_flight=1000
    )
    assert isinstance(result, OpenLoopResult)
    assert result.scheduled == pytest.approx(80, abs=2)  # 200/s over 0.4 s
    assert result.completed == result.scheduled == len(measured)
    assert result.shed == 0
    assert min(measured) == pytest.approx(20, abs=1)  # the first 0.1 s was warm-up


async def test_open_loop_sheds_beyond_max_in_flight() -> None:
    started = time.perf_counter_ns()
    window = Window(started, started + 300_000_000)

    async def stuck(serial: int, is_measured: bool) -> None:
        await asyncio.sleep(0.5)

    result = await open_loop(100.0, stuck, window=window, warmup_start_ns=started, max_in_flight=5)
    assert result.shed == result.scheduled - 5
    assert result.completed == 5


# -- flame graphs -------------------------------------------------------------------------

COLLAPSED = "main (a.py:1);work (a.py:5) 30\nmain (a.py:1);idle <x> 10\n\nbroken line\n"


def test_collapsed_stacks_convert_to_speedscope_and_svg() -> None:
    stacks = parse_collapsed(COLLAPSED)
    assert stacks == [(["main (a.py:1)", "work (a.py:5)"], 30), (["main (a.py:1)", "idle <x>"], 10)]
    profile = to_speedscope(stacks, "svc")
    assert [f["name"] for f in profile["shared"]["frames"]] == [
        "main (a.py:1)",
        "work (a.py:5)",
        "idle <x>",
    ]
    assert profile["profiles"][0]["samples"] == [[0, 1], [0, 2]]
    assert profile["profiles"][0]["endValue"] == 40
    svg = to_svg(stacks, "svc <send>")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "work (a.py:5) (30 samples, 75.0%)" in svg
    assert "idle &lt;x&gt;" in svg and "svc &lt;send&gt;" in svg
    import xml.etree.ElementTree as ET

    ET.fromstring(svg)  # well-formed


# -- report and CLI -----------------------------------------------------------------------


def test_report_has_every_key_and_the_table_shows_them() -> None:
    codec = BodyCodec(run=b"abcd", size=64)
    recorder = DeliveryRecorder(codec)
    recorder.deliver_latencies_ns = [10_000_000, 30_000_000]
    recorder.deliver_acked = {1, 2, 3}
    recorder.deliver_arrived = {1, 2}
    deliver = OpenLoopResult(window_s=2.0, completed=3, offered_rps=100.0, scheduled=3)
    measurements = Measurements(
        baseline_unary=load_result(8000, [10.0, 12.0]),
        baseline_push=load_result(40000, []),
        send=load_result(1000, [40.0, 80.0]),
        send_window_events=2000,
        deliver=DeliverOutcome(load=deliver, drain_s=0.1),
        recorder=recorder,
        fetch=load_result(500, [4.0, 19.0]),
        cpu_seconds={"send": {"svc_message-0": 1.5, "bench_client": 0.4}},
        thin_durable=load_result(1600, [20.0, 50.0]),
        thin_durable_batches={"batches": 100, "documents": 1600},
    )
    params = {
        "loop": "uvloop",
        "quick": True,
        "concurrency": 64,
        "pairs": 32,
        "users": 64,
        "readers": 16,
        "duration_s": 2.0,
        "warmup_s": 0.5,
    }
    machine = {"cores": 2, "python": "3.11", "grpcio": "1.85.1", "loadavg_at_start": [0.5]}
    report = build_report(measurements, machine=machine, parameters=params)
    for key in HEADLINE_KEYS:
        assert isinstance(report[key], float), key
    assert report["send_rps"] == 500.0
    assert report["baseline_unary_rps"] == 4000.0
    assert report["deliver_msgs_per_s"] == 1000.0
    assert report["ratios"]["send_rps / baseline_unary_rps"] == 0.125
    assert report["thin_durable_rps"] == 800.0
    assert report["ratios"]["send_rps / thin_durable_rps"] == 0.625
    assert report["phases"]["thin_durable"]["documents_per_batch"] == 16.0
    verdicts = {t["name"]: t["verdict"] for t in report["targets"]}
    assert verdicts == {
        "send_rps / thin_durable_rps": "MISS",
        "send_ack_p99_ms / thin_durable_p99_ms": "PASS",
        "deliver_p99_ms": "PASS",
        # p50 of 4 and 19 ms
        "fetch_recent_p50_ms": "MISS",
        "fetch_recent_p99_ms": "PASS",
    }
    assert report["phases"]["deliver"]["missing"] == 1
    assert any("never reached" in w for w in report["warnings"])
    assert report["complete"] is True
    json.dumps(report)
    table = render(report)
    assert "MISS  send_rps / thin_durable_rps >= 0.7 x" in table
    assert "svc_message-0" in table and "4,000 unary rps" in table and "800 rps" in table


def test_profile_is_skipped_with_a_message_without_py_spy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from parley_dev.bench import runner

    args = build_parser().parse_args(["bench", "--profile", "--json", str(tmp_path / "b.json")])
    config = runner.BenchConfig(
        start=False,
        keys_target="127.0.0.1:7101",
        message_targets=("127.0.0.1:7102",),
        message_instances=1,
        data_dir=tmp_path,
        loop="asyncio",
        quick=True,
        concurrency=2,
        pairs=1,
        readers=1,
        fetch_conversations=1,
        body_bytes=64,
        warmup_s=0.0,
        duration_s=1.0,
        deliver_rate=None,
        json_path=args.json_path,
        profile=args.profile,
    )
    monkeypatch.setattr(runner, "find_py_spy", lambda: None)
    assert runner._profiler(config) is None
    assert "py-spy is not installed" in capsys.readouterr().err
    assert "not profiled" in runner._profile_notes(config, None)[0]
    assert config.parameters()["profile"] is True


def test_bench_arguments() -> None:
    args = build_parser().parse_args(["bench", "--start", "--quick", "--json", "out.json"])
    assert args.start and args.quick and args.concurrency == 64 and args.pairs == 32
    assert args.readers == 16 and args.loop == "uvloop" and args.json_path == Path("out.json")
    args = build_parser().parse_args(
        ["bench", "--message-target", "localhost:9000", "--pid", "db=12", "--loop", "asyncio"]
    )
    assert args.message_targets == ["127.0.0.1:9000"] and args.pid == [("db", 12)]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--keys-target", "10.0.0.1:7101"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--duration", "0"])


# -- the presence scenario ---------------------------------------------------------------


def test_commandstats_are_parsed_and_differenced_without_the_bench_own_calls() -> None:
    from parley_dev.bench.presence_report import calls_between, command_calls

    info = {
        "cmdstat_evalsha": {"calls": 10, "usec": 50},
        "cmdstat_hset": {"calls": 25, "usec": 30},
        "cmdstat_info": {"calls": 3, "usec": 9},
        "errorstat_ERR": {"count": 1},
    }
    before = command_calls(info)
    assert before == {"evalsha": 10, "hset": 25, "info": 3}
    after = {"evalsha": 14, "hset": 25, "info": 5, "publish": 2}
    assert calls_between(before, after) == {"evalsha": 4, "publish": 2}


def test_redis_cost_per_unit_subtracts_the_background() -> None:
    from parley_dev.bench.presence_report import RedisCost

    # 1000 heartbeats in 2 s; the sweeper ran 2 scripts and 2 range reads per second.
    cost = RedisCost(
        units=1000,
        seconds=2.0,
        calls={"evalsha": 1004, "hset": 1000, "zrangebyscore": 4},
        background_per_s={"evalsha": 2.0, "zrangebyscore": 2.0, "ping": 0.1},
    )
    assert cost.per_unit() == {"evalsha": 1.0, "hset": 1.0}
    assert cost.scripts_per_unit == 1.0 and cost.commands_per_unit == 2.0
    assert cost.command("publish") == 0.0 and cost.command("hset") == 1.0
    assert cost.as_dict()["per_unit"] == {"evalsha": 1.0, "hset": 1.0}
    nothing = RedisCost(units=0, seconds=1.0, calls={"evalsha": 3})
    assert nothing.per_unit() == {} and nothing.scripts_per_unit is None
    assert nothing.command("publish") is None
