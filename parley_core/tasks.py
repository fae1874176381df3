"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], *, rounds: int = 20) -> None:
    """Cancel the tasks and wait until they ended.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for``
    (which redis-py uses for socket writes) returns normally when it is
    cancelled just as its operation completes, so a loop around such a call
    carries on; it is then cancelled again at its next wait.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in pending:
        log.error("task_would_not_stop", task=task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: it was handled (or logged) by the caller
