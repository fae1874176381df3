"""Child processes of the local stack: start, watch, stop by PID, read their logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# How often waits poll a child; short enough that a restart loop reacts quickly.
POLL_SECONDS = 0.05
# Bytes read from the end of a log for error messages; logs can grow large.
TAIL_BYTES = 64 * 1024


class ProcessError(RuntimeError):
    """A child process could not be started or did not behave as expected."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until all are picked."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_pair(step: int, *, avoid: Sequence[int] = (), attempts: int = 200) -> int:
    """A free port ``p`` such that ``p + step`` is free too (both on 127.0.0.1)."""
    for _ in range(attempts):
        port = free_port()
        partner = port + step
        if (
            partner <= 65535
            and port not in avoid
            and partner not in avoid
            and port_is_free(partner)
        ):
            return port
    raise ProcessError(f"no free pair of ports {step} apart after {attempts} tries")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now.

    SO_REUSEADDR mirrors what Redis, gRPC and SecantusDB do, so connections of a
    killed server lingering in TIME_WAIT do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _pdeathsig_prefix() -> list[str]:
    # If the parent dies without cleaning up (SIGKILL, a crashed test run), the
    # kernel sends SIGTERM to each child, so no orphaned servers hold our ports.
    # setpriv (util-linux) execs the command, so the PID stays the child's own.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def read_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a file, or a note that it is missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process, restartable, with stdout and stderr appended to a log file.

    Children run in their own session so a Ctrl-C in the terminal reaches only
    the parent, which then stops them in order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.started_at: float | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive()})"

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run (negative: killed by that signal), or None."""
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.alive():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"\n=== {stamp} starting {self.name}: {' '.join(self.argv)}\n".encode())
        log.flush()
        # The child keeps its own copy of the log descriptor; ours closes right away.
        with log:
            self._start_with_log(log)

    def _start_with_log(self, log: IO[bytes]) -> None:
        try:
            self._popen = subprocess.Popen(
                [*_pdeathsig_prefix(), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child if it still runs; never to anything else."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        """Wait for the child to exit and return its exit code; TimeoutError if it runs on."""
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        while (code := self._popen.poll()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout}s")
            await asyncio.sleep(POLL_SECONDS)
        return code

    async def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if the child is still running after ``timeout``."""
        if self._popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> int | None:
        """SIGKILL (a crash, for chaos tests) and reap the child, so its port frees up."""
        if self._popen is None:
            return None
        self.signal(signal.SIGKILL)
        # A SIGKILLed process exits at once unless stuck in the kernel (disk I/O).
        return await self.wait(30.0)

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)
