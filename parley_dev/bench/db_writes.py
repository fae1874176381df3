"""svc_message's database writes, read from its Prometheus metrics: the scenarios
report how many documents each phase wrote."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Sequence

METRICS_TIMEOUT_SECONDS = 5.0
_DOCUMENTS_WRITTEN = re.compile(
    r'^parley_db_documents_written_total\{collection="([^"]*)",op="([^"]*)"\} (\S+)$'
)


def parse_documents_written(text: str) -> dict[str, int]:
    """``collection/op`` -> documents written, from a Prometheus text page."""
    written: dict[str, int] = {}
    for line in text.splitlines():
        match = _DOCUMENTS_WRITTEN.match(line)
        if match:
            key = f"{match.group(1)}/{match.group(2)}"
            written[key] = written.get(key, 0) + int(float(match.group(3)))
    return written


async def documents_written(urls: Sequence[str]) -> dict[str, int]:
    """svc_message's database writes so far, summed over its processes."""

    def fetch(url: str) -> str:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    total: dict[str, int] = {}
    for text in await asyncio.gather(*(asyncio.to_thread(fetch, url) for url in urls)):
        for key, count in parse_documents_written(text).items():
            total[key] = total.get(key, 0) + count
    return total
