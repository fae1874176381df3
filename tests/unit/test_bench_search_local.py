"""parley_dev/bench/search_local.py (scripts/bench_search_local.py) on a small
corpus: it runs, reports every figure and judges its target (no timing is
asserted; the committed full run is in bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path

from parley_dev.bench.search_local import Corpus, main, run
from parley_sdk.search_text import document_terms


def test_a_small_run_reports_every_figure(tmp_path: Path) -> None:
    report = run(messages=2000, queries=60, directory=tmp_path)
    assert report["messages"] == 2000 + 100
    assert report["index_msgs_per_s"] > 0 and report["index_live_msgs_per_s"] > 0
    sizes = report["index_bytes"]
    assert sizes["total"] == sizes["fts"] + sizes["messages"] > 0
    assert report["queries"] == 60
    assert report["query_p50_ms"] <= report["query_p99_ms"] <= report["query_max_ms"]
    assert set(report["query_p99_ms_by_kind"]) >= {"cjk_word", "prefix", "one_conversation"}
    assert report["targets"]["query_p99_ms"]["verdict"] in ("pass", "fail")


def test_the_corpus_mixes_scripts_and_is_seeded() -> None:
    first = [m.text for m in Corpus.seeded(7).messages(400)]
    assert first == [m.text for m in Corpus.seeded(7).messages(400)]
    joined = "".join(first)
    for sample in ("北", "東京", "서울", "ü"):
        assert sample in joined
    assert all(document_terms(text).positional or not text.isalnum() for text in first)


def test_the_command_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    code = main(["--messages", "500", "--queries", "20", "--json", str(out)])
    assert code in (0, 1)
    assert json.loads(out.read_text())["messages"] == 500 + 100
