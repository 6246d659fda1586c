#!/usr/bin/env bash
# Installs the Debian packages the integration tests start for real: the Prometheus server,
# docker-compose (also validates compose files without an engine), the Docker engine
# (docker.io: dockerd and Debian's BuildKit-capable client /usr/bin/docker) and debootstrap
# (the local Debian base image of docker/build_local_images.sh). Idempotent.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
{ [ -x /usr/bin/docker ] && [ -x /usr/sbin/dockerd ]; } || need+=(docker.io)
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: apt-get not available; tests needing ${need[*]} will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "system-deps: not root and no sudo; tests needing ${need[*]} will be skipped" >&2
    exit 0
  fi
fi
echo "system-deps: installing ${need[*]}"
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
