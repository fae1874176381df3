"""svc_message's database writes, read from its Prometheus metrics: the scenarios
report how many documents each phase wrote."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Sequence

from parley_dev.bench.load import Hook

METRICS_TIMEOUT_SECONDS = 5.0
_DOCUMENTS_WRITTEN = re.compile(
    r'^parley_db_documents_written_total\{collection="([^"]*)",op="([^"]*)"\} (\S+)$'
)
_WRITE_COMMANDS = re.compile(
    r'^parley_db_write_commands_total\{collection="([^"]*)",op="([^"]*)"\} (\S+)$'
)


def _parse(pattern: re.Pattern[str], text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            key = f"{match.group(1)}/{match.group(2)}"
            counts[key] = counts.get(key, 0) + int(float(match.group(3)))
    return counts


def parse_documents_written(text: str) -> dict[str, int]:
    """``collection/op`` -> documents written, from a Prometheus text page."""
    return _parse(_DOCUMENTS_WRITTEN, text)


def parse_write_commands(text: str) -> dict[str, int]:
    """``collection/op`` -> write commands sent, from a Prometheus text page."""
    return _parse(_WRITE_COMMANDS, text)


async def _pages(urls: Sequence[str]) -> list[str]:
    def fetch(url: str) -> str:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    return list(await asyncio.gather(*(asyncio.to_thread(fetch, url) for url in urls)))


def _summed(pages: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for page in pages:
        for key, count in page.items():
            total[key] = total.get(key, 0) + count
    return total


async def documents_written(urls: Sequence[str]) -> dict[str, int]:
    """svc_message's database writes so far, summed over its processes."""
    return _summed([parse_documents_written(text) for text in await _pages(urls)])


async def write_counts(urls: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``collection/op`` -> (commands, documents) so far, summed over svc_message's processes."""
    pages = await _pages(urls)
    commands = _summed([parse_write_commands(text) for text in pages])
    documents = _summed([parse_documents_written(text) for text in pages])
    return {key: (commands.get(key, 0), documents.get(key, 0)) for key in commands | documents}


def per_operation(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], operations: int
) -> dict[str, dict[str, float]]:
    """What a phase wrote per operation (a send): commands and documents per
    ``collection/op``, for those it wrote at all."""
    if operations <= 0:
        return {}
    written: dict[str, dict[str, float]] = {}
    for key in sorted(after):
        commands = after[key][0] - before.get(key, (0, 0))[0]
        documents = after[key][1] - before.get(key, (0, 0))[1]
        if commands or documents:
            written[key] = {
                "commands": round(commands / operations, 4),
                "documents": round(documents / operations, 4),
            }
    return written


class WriteBook:
    """svc_message's database writes at each phase boundary (its /metrics), so
    the report can say what one send cost the database in each phase."""

    def __init__(self, metrics_urls: Sequence[str]) -> None:
        self._urls = list(metrics_urls)
        self._marks: list[dict[str, tuple[int, int]]] = []

    def hook(self) -> Hook:
        async def mark() -> None:
            if self._urls:
                self._marks.append(await write_counts(self._urls))

        return mark

    def per_operation(self, phase: int, operations: int) -> dict[str, dict[str, float]]:
        """Phase ``phase`` (0-based, in hook order, two marks each) per operation."""
        if len(self._marks) < 2 * phase + 2:
            return {}
        return per_operation(self._marks[2 * phase], self._marks[2 * phase + 1], operations)
