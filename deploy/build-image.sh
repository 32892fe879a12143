#!/usr/bin/env bash
# Build the kvmtimer image without Docker and without a container registry:
#   1. wheels of kvmtimer and its locked dependencies (deploy/requirements.lock) are prepared on
#      this machine (pip wheel), into build/wheels;
#   2. the base image is a minimal Debian rootfs with Python made by mmdebstrap and imported with
#      `podman import` (unless --base names an image you have, e.g. python:3.11-slim-bookworm);
#   3. podman (buildah) builds deploy/Dockerfile with that base; the image build itself needs no
#      network (pip install --no-index from the wheels).
#
# Usage: deploy/build-image.sh [--tag IMAGE] [--base IMAGE] [--wheels-only] [--lock]
#   --tag IMAGE     image to build (default localhost/kvmtimer:0.1.0)
#   --base IMAGE    base image to build on (default: localhost/kvmtimer-base:bookworm, made here)
#   --wheels-only   only prepare build/wheels (for `docker build -f deploy/Dockerfile .`)
#   --lock          re-resolve deploy/requirements.lock from pyproject.toml first (needs PyPI)
# Environment: PYTHON (default python3; must be the base image's Python minor version, 3.11),
# CONTAINERS_CONF (default: deploy/podman/containers.conf: runtime runc, sandbox-safe ulimits),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=localhost/kvmtimer:0.1.0
base=
wheels_only=0
lock=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --wheels-only) wheels_only=1; shift ;;
    --lock) lock=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
SUITE=bookworm
# What the base rootfs holds: Python with venv (and pip's bundled wheel), useradd, libstdc++ for
# grpcio's wheels. Nothing else: no shell tools beyond minbase, no compiler, no package cache.
BASE_PACKAGES=python3,python3-venv,libstdc++6,passwd
# The base is made once per package list (remove the image to refresh its packages).
BASE_TAG=localhost/kvmtimer-base:$SUITE-$(printf %s "$BASE_PACKAGES" | sha256sum | cut -c1-12)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
say() { echo "build-image: $*" >&2; }

if [ "$lock" = 1 ]; then
  say "resolving deploy/requirements.lock"
  "$PY" -m pip install --quiet --dry-run --ignore-installed --report build/lock-report.json . >/dev/null
  "$PY" - <<'EOF'
import json
report = json.load(open("build/lock-report.json"))
pins = sorted(
    f"{i['metadata']['name'].lower()}=={i['metadata']['version']}"
    for i in report["install"]
    if i["metadata"]["name"].lower() != "kvmtimer"
)
with open("deploy/requirements.lock", "w") as out:
    out.write("# Runtime dependencies of kvmtimer, pinned (deploy/build-image.sh --lock re-resolves).\n")
    out.write("\n".join(pins) + "\n")
EOF
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  say "$PY is not Python 3.11, the base image's Python: its wheels would not install (set PYTHON)"
  exit 2
fi
say "wheels of kvmtimer and deploy/requirements.lock -> build/wheels"
rm -rf build/wheels
mkdir -p build/wheels
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels \
  -r deploy/requirements.lock
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir build/wheels .
if [ "$wheels_only" = 1 ]; then
  say "wheels ready in build/wheels"
  exit 0
fi

command -v podman >/dev/null || { say "podman is not installed"; exit 3; }
if [ -z "$base" ]; then
  base=$BASE_TAG
  if ! podman image exists "$base"; then
    command -v mmdebstrap >/dev/null || { say "mmdebstrap is not installed (needed for the base image)"; exit 3; }
    say "base rootfs: mmdebstrap $SUITE ($BASE_PACKAGES) -> $base"
    rootfs=$(mktemp -d)/rootfs.tar
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
      --aptopt='Acquire::Retries "3"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$SUITE" "$rootfs" "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} $SUITE main"
    podman import --quiet --change 'CMD ["/usr/bin/python3"]' "$rootfs" "$base" >/dev/null
    rm -rf "$(dirname "$rootfs")"
  fi
fi

previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
say "podman build $tag (base $base, no network)"
# --no-cache: the wheels arrive through a bind mount, which layer caching does not see.
podman build --quiet --no-cache --network=none --pull=never --build-arg "BASE=$base" \
  -f deploy/Dockerfile -t "$tag" . >/dev/null
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true  # the image this build replaced, unless in use
fi
say "built $tag"
