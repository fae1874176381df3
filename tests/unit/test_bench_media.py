"""The media scenario's pure parts: distinct ciphertexts made from one random
body (their hashes right, their bodies never copied), and the report built
from hand-made phase results."""

from __future__ import annotations

import hashlib
import json

from parley_dev.bench.load import LoadResult
from parley_dev.bench.media import TAIL_BYTES, Ciphertexts, merged, merged_cpu, size_label
from parley_dev.bench.media_report import (
    MediaMeasurements,
    SizeRun,
    build_media_report,
    headline_keys,
    render_media,
)

MIB = 1 << 20


async def joined(texts: Ciphertexts, body: object) -> bytes:
    return b"".join([bytes(chunk) async for chunk in body])  # type: ignore[attr-defined]


async def test_each_ciphertext_is_new_and_hashed_right() -> None:
    texts = Ciphertexts(MIB, part_size=0)
    one, two = texts.make(), texts.make()
    assert one.sha256 != two.sha256 and one.part_sha256s == ()
    data = await joined(texts, texts.body(one))
    assert len(data) == MIB and hashlib.sha256(data).digest() == one.sha256
    assert data[-TAIL_BYTES:] == one.tail
    assert await joined(texts, texts.body(one, 10, 20)) == data[10:20]
    assert await joined(texts, texts.body(one, MIB - 40, MIB)) == data[-40:]


async def test_multipart_ciphertexts_carry_each_parts_hash() -> None:
    size, part = 9 * MIB + 100, 4 * MIB
    texts = Ciphertexts(size, part_size=part)
    blob = texts.make()
    data = await joined(texts, texts.body(blob))
    assert hashlib.sha256(data).digest() == blob.sha256
    assert len(blob.part_sha256s) == 3
    for number, expected in enumerate(blob.part_sha256s, start=1):
        piece = await joined(texts, texts.part(blob, number))
        assert piece == data[(number - 1) * part : number * part]
        assert hashlib.sha256(piece).digest() == expected


def result(completed: int, latency_ms: float, window_s: float = 2.0) -> LoadResult:
    return LoadResult(window_s, completed, [int(latency_ms * 1e6)] * completed)


def test_the_report_puts_each_size_beside_the_bare_store() -> None:
    run = SizeRun(
        label=size_label(MIB),
        size=MIB,
        parts=1,
        results={
            "bare_put": result(100, 20.0),
            "media_upload": result(80, 25.0),
            "bare_get": result(200, 10.0),
            "media_download": result(100, 20.0),
        },
        steps={
            "create_upload": [3_000_000] * 80,
            "complete_upload": [5_000_000] * 80,
            "get_download": [4_000_000] * 100,
        },
    )
    cpu = {"media_upload_1mib": {"svc_media": 0.8, "seaweedfs": None}}
    report = build_media_report(
        MediaMeasurements([run], cpu),
        machine={"cores": 2, "python": "3.11", "loadavg_at_start": [0.5, 0.5, 0.5]},
        parameters={
            "sizes_bytes": [MIB],
            "sizes": ["1mib"],
            "quick": True,
            "loop": "uvloop",
            "concurrency": 4,
            "duration_s": 2.0,
            "warmup_s": 0.5,
        },
    )
    assert report["bare_put_1mib_mb_per_s"] == round(100 * MIB / 2 / 1e6, 2)
    assert report["ratios"]["media_upload_1mib_mb_per_s / bare_put_1mib_mb_per_s"] == 0.8
    assert report["ratios"]["media_download_1mib_mb_per_s / bare_get_1mib_mb_per_s"] == 0.5
    assert [t["verdict"] for t in report["targets"]] == ["PASS", "MISS"]
    assert report["media_create_upload_1mib_p50_ms"] == 3.0
    assert report["media_get_download_1mib_p99_ms"] == 4.0
    upload = report["phases"]["media_upload_1mib"]
    assert upload["time_split_mean_ms"] == {
        "create_upload": 3.0,
        "complete_upload": 5.0,
        "transfer": 17.0,
    }
    assert upload["cpu_ms_per_op"] == {"svc_media": 10.0, "seaweedfs": None}
    assert report["complete"] is True and report["warnings"] == []
    assert all(isinstance(report[k], float) for k in headline_keys(["1mib"]))
    json.dumps(report)
    table = render_media(report)
    assert "1 MiB: upload+complete MB/s" in table and "PUT   0.80" in table
    assert "MISS  media_download_1mib_mb_per_s / bare_get_1mib_mb_per_s >= 0.8 x" in table

    run.results["media_download"] = LoadResult(2.0, errors={"TransferFailed": 3})  # type: ignore[arg-type]
    broken = build_media_report(
        MediaMeasurements([run]), machine={}, parameters={"sizes_bytes": [MIB]}
    )
    assert broken["complete"] is False
    assert broken["warnings"][0].startswith("not measured: media_download_1mib_mb_per_s")
    assert "media_download_1mib: errors {'TransferFailed': 3}" in broken["warnings"]


def test_the_turns_of_a_phase_add_up() -> None:
    first, second = result(3, 10.0, window_s=1.0), result(5, 20.0, window_s=2.0)
    second.errors["TransferFailed"] += 1
    total = merged([first, second])
    assert (total.window_s, total.completed, len(total.latencies_ns)) == (3.0, 8, 8)
    assert total.errors == {"TransferFailed": 1}
    cpu = merged_cpu(
        {
            "bare_put_1mib#0": {"seaweedfs": 0.5, "svc_media": 0.0},
            "bare_put_1mib#1": {"seaweedfs": 0.25, "svc_media": None},
            "media_upload_1mib#0": {"seaweedfs": 1.0},
        }
    )
    assert cpu == {
        "bare_put_1mib": {"seaweedfs": 0.75, "svc_media": None},
        "media_upload_1mib": {"seaweedfs": 1.0},
    }
