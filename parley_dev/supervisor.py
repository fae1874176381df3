"""Keeps a running LocalStack up: restarts a crashed child with exponential backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from parley_dev.probes import StackError
from parley_dev.stack import LocalStack


@dataclass
class _Restarts:
    failures: int = 0
    next_attempt: float | None = None


class Supervisor:
    """Watches every process of a started stack and restarts the ones that exit.

    The delay doubles with each consecutive failure (a crash, or a restart that
    did not come up) up to ``max_backoff``; a process that stays up for
    ``stable_seconds`` starts again from ``initial_backoff``.
    """

    def __init__(
        self,
        stack: LocalStack,
        *,
        log: logging.Logger,
        poll_seconds: float = 0.5,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_seconds: float = 60.0,
    ) -> None:
        self.stack = stack
        self.log = log
        self.poll_seconds = poll_seconds
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stable_seconds = stable_seconds
        self.restart_count = 0
        self._state = {name: _Restarts() for name in stack.component_names}

    def backoff(self, failures: int) -> float:
        """Delay before the next restart after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures - 1, 0), 30)  # capped so 2**exponent stays small
        return float(min(self.max_backoff, self.initial_backoff * 2**exponent))

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop`` is set; the caller then stops the stack."""
        while not stop.is_set():
            for name in self.stack.component_names:
                if stop.is_set():
                    return
                await self._check(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)

    async def _check(self, name: str) -> None:
        process = self.stack.process(name)
        state = self._state[name]
        now = time.monotonic()
        if process.alive():
            started = process.started_at
            if state.failures and started is not None and now - started >= self.stable_seconds:
                state.failures = 0
            return
        if state.next_attempt is None:
            state.failures += 1
            delay = self.backoff(state.failures)
            state.next_attempt = now + delay
            self.log.warning(
                "%s (pid %s) exited with code %s; restarting in %.1fs (see %s)",
                name,
                process.pid,
                process.returncode,
                delay,
                process.log_path,
            )
            return
        if now < state.next_attempt:
            return
        state.next_attempt = None
        try:
            await self.stack.start_component(name)
        except StackError as exc:
            # Counted as another failure: the process is down again, so the next
            # pass schedules a longer delay.
            self.log.error("restarting %s failed: %s", name, exc)
            return
        self.restart_count += 1
        self.log.warning("%s restarted (pid %s)", name, process.pid)
