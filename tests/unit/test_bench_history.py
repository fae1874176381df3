"""The bench's run history and ``--compare``: the pure parts and the command."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from parley_dev.bench import history
from parley_dev.bench.compare import better_direction, compare_runs, render_comparison
from parley_dev.cli import build_parser

# -- history ---------------------------------------------------------------------------


def _report(send_rps: float, verdict: str = "PASS", quick: bool = True) -> dict[str, Any]:
    return {
        "scenario": "messaging",
        "send_rps": send_rps,
        "send_ack_p99_ms": 40.0,
        "fetch_recent_p50_ms": 5.0,
        "complete": True,
        "ratios": {"send_rps / thin_durable_rps": send_rps / 1000},
        "targets": [
            {
                "name": "send_rps / thin_durable_rps",
                "value": send_rps / 1000,
                "limit": 0.7,
                "comparison": ">=",
                "unit": "x",
                "verdict": verdict,
            }
        ],
        "phases": {"send": {"completed": 10}},
        "parameters": {"quick": quick},
    }


def test_history_appends_one_line_per_run_and_finds_entries(tmp_path: Path) -> None:
    path = tmp_path / "results" / "history.jsonl"
    for send_rps in (800.0, 900.0):
        entry = history.history_entry(
            _report(send_rps),
            scenario="messaging",
            timestamp=datetime(2026, 12, 7, 5, 0, tzinfo=UTC),
            git={"commit": "abcdef0123456789", "dirty": False},
            machine={"cpu_count": 2},
        )
        history.append(path, entry)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["scenario"] == "messaging" and first["run"] == "quick"
    assert first["timestamp"] == "2026-12-07T05:00:00+00:00"
    assert first["figures"] == {
        "send_rps": 800.0,
        "send_ack_p99_ms": 40.0,
        "fetch_recent_p50_ms": 5.0,
    }
    assert first["targets"][0]["verdict"] == "PASS" and first["machine"] == {"cpu_count": 2}
    label, newest = history.load_run("history:-1", path)
    assert newest["figures"]["send_rps"] == 900.0
    assert label.startswith("history:-1 (2026-12-07T05:00:00+00:00 abcdef0123")
    assert history.load_run("history:0", path)[1]["figures"]["send_rps"] == 800.0
    with pytest.raises(history.RunNotFound, match="holds 2 runs"):
        history.load_run("history:-3", path)
    with pytest.raises(history.RunNotFound, match="history:N"):
        history.load_run("history:last", path)
    with pytest.raises(history.RunNotFound):
        history.load_run(str(tmp_path / "absent.json"), path)


def test_git_commit_of_a_checkout_and_of_no_checkout(tmp_path: Path) -> None:
    assert history.git_commit(tmp_path) is None
    here = history.git_commit()
    assert here is not None and len(here["commit"]) == 40


# -- compare ---------------------------------------------------------------------------


def test_compare_lists_common_figures_with_change_and_flags_moves_beyond_the_threshold() -> None:
    a = _report(1000.0)
    entry_b = history.history_entry(
        {**_report(850.0, verdict="MISS"), "send_ack_p99_ms": 44.0, "extra_only_in_b": 1.0},
        scenario="messaging",
        timestamp=datetime(2026, 12, 7, tzinfo=UTC),
        git=None,
        machine={},
    )
    rows = {row.name: row for row in compare_runs(a, entry_b, threshold_pct=10.0)}
    assert set(rows) == {
        "send_rps",
        "send_ack_p99_ms",
        "fetch_recent_p50_ms",
        "send_rps / thin_durable_rps",
    }
    send = rows["send_rps"]
    assert send.change_pct == pytest.approx(-15.0) and send.moved and send.judgement == "worse"
    p99 = rows["send_ack_p99_ms"]
    assert p99.change_pct == pytest.approx(10.0) and not p99.moved and p99.judgement == ""
    ratio = rows["send_rps / thin_durable_rps"]
    assert (ratio.verdict_a, ratio.verdict_b) == ("PASS", "MISS") and ratio.verdict_changed
    assert rows["fetch_recent_p50_ms"].change_pct == 0.0
    tighter = {r.name: r for r in compare_runs(a, entry_b, threshold_pct=5.0)}
    assert tighter["send_ack_p99_ms"].moved and tighter["send_ack_p99_ms"].judgement == "worse"

    text = render_comparison(
        ("a.json", "history:-1"), (a, entry_b), list(rows.values()), threshold_pct=10.0
    )
    assert "A = a.json: messaging, quick run" in text
    assert "-15.0%  << worse" in text and "PASS -> MISS !" in text
    assert "2 of 4 figures moved beyond ±10% (2 worse, 0 better); 1 target verdicts changed" in text


def test_better_direction_from_the_target_or_the_unit() -> None:
    assert better_direction("x", {"comparison": ">="}) == "higher"
    assert better_direction("x", {"comparison": "<="}) == "lower"
    assert better_direction("deliver_p99_ms", None) == "lower"
    assert better_direction("presence_heartbeats_per_s / baseline_unary_rps", None) == "higher"
    assert better_direction("group_deliver_count", None) is None


def test_compare_command_reads_json_files_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, log = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "history.jsonl"
    a.write_text(json.dumps(_report(1000.0)))
    b.write_text(json.dumps(_report(1300.0)))
    history.append(
        log,
        history.history_entry(
            _report(1000.0), scenario="messaging", timestamp=datetime.now(UTC), git=None, machine={}
        ),
    )
    args = build_parser().parse_args(["bench", "--compare", str(a), str(b)])
    assert args.func(args) == 0
    assert "+30.0%  << better" in capsys.readouterr().out
    args = build_parser().parse_args(
        ["bench", "--history", str(log), "--compare", "history:-1", str(b), "--threshold", "50"]
    )
    assert args.func(args) == 0
    assert "0 of 4 figures moved beyond ±50%" in capsys.readouterr().out
    args = build_parser().parse_args(
        ["bench", "--history", str(log), "--compare", "history:-2", str(b)]
    )
    with pytest.raises(SystemExit, match="holds 1 runs"):
        args.func(args)


def test_history_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from parley_dev.bench import runner, scenarios

    seen: list[runner.BenchConfig] = []
    monkeypatch.setattr(scenarios, "run_bench", lambda config: seen.append(config) or 0)
    for argv, expected in (
        (["bench"], history.DEFAULT_HISTORY),
        (["bench", "--history", str(tmp_path / "h.jsonl")], tmp_path / "h.jsonl"),
        (["bench", "--no-history"], None),
    ):
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        assert seen[-1].history_path == expected
    assert history.DEFAULT_HISTORY.parent.name == "results"
