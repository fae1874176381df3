"""``--profile``: py-spy attached to the svc_message processes during the send phase.

py-spy is optional (not a project dependency): without it the bench runs
unprofiled and says so. It needs ptrace rights over the service processes
(same user, and ptrace_scope or CAP_SYS_PTRACE allowing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from parley_dev.bench.flamegraph import parse_collapsed, to_speedscope, to_svg

SAMPLE_RATE_HZ = 100
# py-spy needs a moment to attach and to write its file after --duration.
EXIT_MARGIN_SECONDS = 15.0


def find_py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    pid: int
    raw_path: Path
    process: asyncio.subprocess.Process


@dataclass
class Profiler:
    """Records each target process for a fixed duration, then writes SVG and speedscope files."""

    executable: str
    out_dir: Path
    prefix: str
    recordings: list[Recording] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def start(self, pids: Mapping[str, int], duration_s: float) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            raw_path = self.out_dir / f"{self.prefix}-{name}.collapsed.txt"
            process = await asyncio.create_subprocess_exec(
                self.executable,
                "record",
                *("--pid", str(pid)),
                *("--duration", str(max(1, round(duration_s)))),
                *("--rate", str(SAMPLE_RATE_HZ)),
                *("--format", "raw"),
                *("--output", str(raw_path)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            self.recordings.append(Recording(name, pid, raw_path, process))

    async def finish(self, duration_s: float) -> None:
        for recording in self.recordings:
            output = await self._wait(recording, duration_s + EXIT_MARGIN_SECONDS)
            if not recording.raw_path.exists():
                self.problems.append(
                    f"py-spy wrote nothing for {recording.name} (pid {recording.pid}): "
                    f"{output.strip()[-400:]}"
                )
                continue
            stacks = parse_collapsed(recording.raw_path.read_text())
            title = f"{recording.name} during the send phase"
            svg_path = recording.raw_path.with_name(f"{self.prefix}-{recording.name}.svg")
            svg_path.write_text(to_svg(stacks, title))
            speedscope_path = recording.raw_path.with_name(
                f"{self.prefix}-{recording.name}.speedscope.json"
            )
            speedscope_path.write_text(json.dumps(to_speedscope(stacks, title)))
            self.files += [str(svg_path), str(speedscope_path), str(recording.raw_path)]

    async def _wait(self, recording: Recording, timeout: float) -> str:
        process = recording.process
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            # Only this py-spy child, by its own handle.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return "py-spy did not finish in time and was killed"
        return (stdout or b"").decode(errors="replace")

    async def abort(self) -> None:
        for recording in self.recordings:
            if recording.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    recording.process.kill()
                await recording.process.wait()
