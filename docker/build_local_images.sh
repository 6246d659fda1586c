#!/usr/bin/env bash
# Builds the project's images on a machine that reaches no image registry (docker/README.md):
#
#   1. ppa-local/debian:bookworm     a Debian base from Debian packages (debootstrap minbase +
#                                    python3, python3-venv, ca-certificates), imported
#   2. ppa-local/flwr:1.41.0         stand-in for flwr/superlink|supernode|superexec:1.41.0
#                                    (docker/base/flwr.Dockerfile: same layout)
#   3. ppa-local/prometheus:bookworm stand-in for prom/prometheus (Debian's package)
#   4. docker/wheels/                torch + torchvision (the constraints.txt pair) and their
#                                    dependencies, fetched by this machine's pip
#   5. ppa-fedreid/{superlink,serverapp,site}:$PPA_IMAGE_TAG from docker/Dockerfile, FROM the
#                                    stand-in
# Steps whose image or folder exists are skipped (delete them to rebuild); step 5 always runs
# (BuildKit's cache makes an unchanged rebuild take seconds). Prints "build-time STEP SECONDS".
#
# Environment: DOCKER (default /usr/bin/docker: Debian's client, BuildKit built in; a newer
# client without buildx refuses BuildKit builds), PPA_BUILD_CA (CA bundle for pip in the
# builds, a BuildKit secret; default: the system bundle if there is one), DEBIAN_MIRROR,
# PYTHON (the pip that fetches the wheels; default .venv/bin/python), PPA_IMAGE_TAG (0.1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
PYTHON=${PYTHON:-.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAG=${PPA_IMAGE_TAG:-0.1.0}
FLWR_VERSION=1.41.0
DEBIAN_IMAGE=ppa-local/debian:bookworm
FLWR_IMAGE=ppa-local/flwr:$FLWR_VERSION
PROMETHEUS_IMAGE=ppa-local/prometheus:bookworm
CA=${PPA_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=1

secret=()
if [ -f "$CA" ]; then secret=(--secret "id=ca,src=$CA"); fi
has_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
timed() {  # timed STEP command...
  local start=$SECONDS
  "${@:2}"
  echo "build-time $1 $((SECONDS - start))"
}

debian_base() {
  local rootfs
  rootfs=$(mktemp -d /tmp/ppa-rootfs.XXXXXX)
  # Expanded now and removed once fired: a RETURN trap would otherwise also fire when the
  # caller returns, after the local is gone (set -u).
  trap "rm -rf '$rootfs'; trap - RETURN" RETURN
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
  tar -C "$rootfs" -c . | "$DOCKER" import - "$DEBIAN_IMAGE" >/dev/null
}

wheels() {
  "$PYTHON" -m pip download -q -c constraints.txt -d docker/wheels torch torchvision
}

project_images() {
  local target
  for target in superlink serverapp site; do
    "$DOCKER" build -q -f docker/Dockerfile --target "$target" \
      --build-arg SUPERLINK_IMAGE="$FLWR_IMAGE" \
      --build-arg SUPERNODE_IMAGE="$FLWR_IMAGE" \
      --build-arg SUPEREXEC_IMAGE="$FLWR_IMAGE" \
      "${secret[@]}" -t "ppa-fedreid/$target:$TAG" . >/dev/null
  done
}

flwr_base() {
  "$DOCKER" build -q -f docker/base/flwr.Dockerfile \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg FLWR_VERSION="$FLWR_VERSION" \
    "${secret[@]}" -t "$FLWR_IMAGE" docker/base >/dev/null
}

prometheus_base() {
  "$DOCKER" build -q -f docker/base/prometheus.Dockerfile \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" -t "$PROMETHEUS_IMAGE" docker/base >/dev/null
}

# Each step a function that silences its own build output: a redirect after `timed ...`
# would swallow the step's build-time line too.
has_image "$DEBIAN_IMAGE" || timed debian-base debian_base
has_image "$FLWR_IMAGE" || timed flwr-base flwr_base
has_image "$PROMETHEUS_IMAGE" || timed prometheus-base prometheus_base
ls docker/wheels/torch-*.whl >/dev/null 2>&1 || timed wheels wheels
timed project-images project_images
