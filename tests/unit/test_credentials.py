"""Service and operator credentials: what each accepts and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley_core.auth.credentials import (
    OperatorCredentials,
    PrincipalKind,
    ServiceCredential,
    new_token,
    token_digest_hex,
)
from parley_core.errors import Unauthenticated


def test_service_credential_accepts_only_its_token(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "service-token").write_text(token + "\n")
    credential = ServiceCredential.from_file(tmp_path / "service-token")
    assert credential.verify(token).kind is PrincipalKind.SERVICE
    assert credential.metadata() == (("authorization", f"Bearer {token}"),)
    for wrong in (new_token(), token[:-1], token + "x", ""):
        with pytest.raises(Unauthenticated):
            credential.verify(wrong)


def test_service_token_must_be_long() -> None:
    with pytest.raises(ValueError, match="32"):
        ServiceCredential("short")


def test_operator_tokens_are_known_by_digest_and_name(tmp_path: Path) -> None:
    alice, bob = new_token(), new_token()
    listing = tmp_path / "operators"
    listing.write_text(
        "# on-call operators\n"
        f"alice {token_digest_hex(alice)}\n\n"
        f"bob {token_digest_hex(bob)}  # backup\n"
    )
    operators = OperatorCredentials.from_file(listing)
    assert operators.verify(alice).name == "alice"
    assert operators.verify(bob).kind is PrincipalKind.OPERATOR
    assert alice not in listing.read_text()
    with pytest.raises(Unauthenticated):
        operators.verify(new_token())


def test_no_operator_file_admits_no_one() -> None:
    with pytest.raises(Unauthenticated):
        OperatorCredentials.from_file(None).verify(new_token())


def test_malformed_operator_line_names_the_line(tmp_path: Path) -> None:
    listing = tmp_path / "operators"
    listing.write_text("alice\n")
    with pytest.raises(ValueError, match=":1:"):
        OperatorCredentials.from_file(listing)
