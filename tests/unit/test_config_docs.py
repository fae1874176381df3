"""docs/configuration.md is generated from parley_core/config/: it must be
fresh, and every key must say what it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from parley_core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen_config_docs.py"
REFERENCE = ROOT / "docs" / "configuration.md"


def every_key(model: BaseModel, path: str = "") -> list[tuple[str, str | None]]:
    keys: list[tuple[str, str | None]] = []
    for name, info in type(model).model_fields.items():
        dotted = f"{path}{name}"
        keys.append((dotted, info.description))
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += every_key(value, f"{dotted}.")
    return keys


def test_every_setting_says_what_it_does() -> None:
    keys = every_key(Settings())
    assert len(keys) > 50
    undocumented = [key for key, text in keys if not (text and text.strip())]
    assert not undocumented, f"fields without a docstring in parley_core/config/: {undocumented}"


def test_the_configuration_reference_is_fresh(tmp_path: Path) -> None:
    fresh = tmp_path / "configuration.md"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(fresh)], check=True, capture_output=True
    )
    assert REFERENCE.read_text() == fresh.read_text(), (
        "docs/configuration.md is stale; run: uv run python scripts/gen_config_docs.py"
    )


def test_the_reference_names_every_key_and_its_variable() -> None:
    text = REFERENCE.read_text()
    for key, _ in every_key(Settings()):
        if not isinstance(getattr_path(Settings(), key), BaseModel):
            variable = "PARLEY_" + key.upper().replace(".", "__")
            assert f"| `{key}` |" in text and f"`{variable}`" in text, key


def getattr_path(model: BaseModel, dotted: str) -> object:
    value: object = model
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
