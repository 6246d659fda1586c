# A local stand-in for Flower's images (flwr/superlink, flwr/supernode, flwr/superexec) where
# no image registry is reachable: the same layout on a Debian base made from Debian packages
# (docker/build_local_images.sh imports it with debootstrap). Flower's images: a venv in
# /python/venv that comes first on PATH and belongs to the non-root user `app` (uid 49999,
# HOME and WORKDIR /app), flwr installed in it. The project's images extend it exactly as
# they extend Flower's (docker/Dockerfile).
#
#   DOCKER_BUILDKIT=1 docker build -f docker/base/flwr.Dockerfile \
#       --build-arg DEBIAN_IMAGE=ppa-local/debian:bookworm \
#       --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t ppa-local/flwr:1.41.0 docker/base
#
# The secret `ca` (optional) is a CA bundle for pip behind a TLS-inspecting proxy; it is
# mounted for the one RUN that needs it and never stored in a layer.

ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ARG FLWR_VERSION=1.41.0
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/python/venv \
    PATH=/python/venv/bin:$PATH
RUN groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /bin/bash app \
    && python3 -m venv /python/venv \
    && chown -R app:app /python
USER 49999:49999
WORKDIR /app
RUN --mount=type=secret,id=ca,mode=0444 \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir "flwr==${FLWR_VERSION}"
