"""The README's first SDK example runs as printed (against the test stack
rather than the default addresses, with unique handles and stores in a
temporary directory) and prints the decrypted text."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from parley_dev.stack import LocalStack

README = Path(__file__).resolve().parents[2] / "README.md"


def encrypted_example() -> str:
    text = README.read_text()
    section = text[text.index("## Connecting a client") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its SDK example"
    return match.group(1)


def test_the_example_is_about_ten_lines_of_work() -> None:
    body = encrypted_example().split("async def main() -> None:")[1].split("asyncio.run")[0]
    statements = [
        line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    assert len(statements) <= 10


async def test_readme_sdk_example_sends_an_encrypted_message(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = encrypted_example()
    targets = (
        f"keys_target={stack.keys_target!r}, message_target={stack.message_targets[0]!r}, "
        f"presence_target={stack.presence_target!r}, "
    )
    suffix = uuid.uuid4().hex[:8]
    source = source.replace("Client.connect(", f"Client.connect({targets}")
    for name in ("alice", "bob"):
        source = source.replace(f'store="{name}.db"', f"store={str(tmp_path / name)!r}")
        source = source.replace(f'handle="{name}"', f'handle="{name}_{suffix}"')
    source = source.replace("asyncio.run(main())", "")
    namespace: dict[str, object] = {}
    exec(compile(source, str(README), "exec"), namespace)
    main = namespace["main"]
    await main()  # type: ignore[operator]
    printed = capsys.readouterr().out
    assert "only Bob's devices can read this" in printed
    assert (tmp_path / "alice").exists() and (tmp_path / "bob").exists()
