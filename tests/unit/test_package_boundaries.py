"""The CLI's import contract names every private module of the SDK, so a new one
cannot slip past it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk"
CONTRACT = "The chat CLI uses only the SDK's public API"


def private_sdk_modules() -> set[str]:
    found = set()
    for path in (SDK / "parley_sdk").rglob("_*.py"):
        if path.name.startswith("__"):
            continue
        found.add(".".join(path.relative_to(SDK).with_suffix("").parts))
    return found


def test_the_cli_contract_forbids_every_private_sdk_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == CONTRACT]
    assert contract["source_modules"] == ["parley_cli"]
    private = private_sdk_modules()
    assert "parley_sdk._secure" in private and "parley_sdk.e2ee._ratchet" in private
    assert set(contract["forbidden_modules"]) == private
