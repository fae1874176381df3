"""Every Python block of docs/sdk.md runs as printed against the session's
stack, as the README's example does (tests/integration/test_readme_example.py):
pointed at the stack's addresses instead of the default ones, with unique
handles, in a directory of its own for its stores and files."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley_dev.stack import LocalStack

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
BLOCK = re.compile(r"^```python( fragment)?\n(.*?)^```$", re.DOTALL | re.MULTILINE)
ENTRY = "asyncio.run(main())"
EXAMPLE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Block:
    line: int
    source: str
    fragment: bool


def blocks() -> list[Block]:
    text = GUIDE.read_text()
    return [
        Block(text.count("\n", 0, match.start(2)) + 1, match.group(2), bool(match.group(1)))
        for match in BLOCK.finditer(text)
    ]


def examples() -> list[Block]:
    return [block for block in blocks() if not block.fragment]


def pointed_at(block: Block, stack: LocalStack, suffix: str) -> str:
    """The example's source against ``stack``, as a module whose ``main`` the
    test awaits on its own loop (the example's asyncio.run cannot run there).
    Blank lines in front keep tracebacks on the guide's line numbers."""
    targets = (
        f"keys_target={stack.keys_target!r}, message_target={stack.message_targets[0]!r}, "
        f"presence_target={stack.presence_target!r}, "
    )
    # A stack without svc_media (or svc_search) leaves those examples at the default address,
    # where they fail: the other examples still run.
    media_target = getattr(stack, "media_target", None)
    if media_target is not None:
        targets += f"media_target={media_target!r}, "
    search_target = getattr(stack, "search_target", None)
    if search_target is not None:
        targets += f"search_target={search_target!r}, "
    source = block.source
    for call in ("Client.connect(", "Client.sign_up("):
        source = source.replace(call, call + targets)
    source = re.sub(r'handle="(\w+)"', rf'handle="\1_{suffix}"', source)
    source = source.replace(ENTRY, "")
    return "\n" * (block.line - 1) + source


def test_the_guide_is_complete_programs_but_a_few_fragments() -> None:
    found = blocks()
    assert len(examples()) >= 8
    assert sum(block.fragment for block in found) <= 3
    for block in examples():
        assert "async def main() -> None:" in block.source, f"line {block.line}: no main()"
        assert block.source.rstrip().endswith(ENTRY), f"line {block.line}: does not run main()"


@pytest.mark.parametrize("block", examples(), ids=lambda block: f"line{block.line}")
async def test_a_guide_example_runs(
    block: Block,
    stack: LocalStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's stores and files land here
    source = pointed_at(block, stack, uuid.uuid4().hex[:8])
    namespace: dict[str, object] = {"__name__": f"sdk_guide_line{block.line}"}
    exec(compile(source, str(GUIDE), "exec"), namespace)
    main = namespace["main"]
    async with asyncio.timeout(EXAMPLE_TIMEOUT_SECONDS):
        await main()  # type: ignore[operator]
    printed = capsys.readouterr().out
    assert printed.strip(), "every example prints what it shows"
