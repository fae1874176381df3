"""The service comments of the protos name exactly the RPCs that take abuse
limits (tests/limited_rpcs.py, itself checked against docs/ARCHITECTURE.md):
clients written against the protos alone learn which calls may be refused."""

from __future__ import annotations

import re
from pathlib import Path

from tests.limited_rpcs import LIMITS_BY_RPC

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "parley"


def test_each_service_comment_lists_its_rate_limited_rpcs() -> None:
    named: set[str] = set()
    for proto in PROTOS.glob("*/v1/*.proto"):
        text = proto.read_text()
        rpcs = set(re.findall(r"^\s*rpc (\w+)\(", text, flags=re.MULTILINE))
        header = re.search(r"// Rate limited \(.*?\n(?!//)", text, flags=re.DOTALL)
        listed = set(re.findall(r"\b[A-Z]\w+\b", header[0])) & rpcs if header else set()
        assert listed == rpcs & LIMITS_BY_RPC.keys(), proto.name
        named |= listed
    assert named == set(LIMITS_BY_RPC)
