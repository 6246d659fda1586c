# A local stand-in for prom/prometheus where no image registry is reachable: Debian's
# prometheus package on the Debian base of docker/build_local_images.sh, laid out like the
# official image (runs as `nobody`, TSDB in /prometheus, config mounted at
# /etc/prometheus/prometheus.yml, the server binary as entry point).
#
#   DOCKER_BUILDKIT=1 docker build -f docker/base/prometheus.Dockerfile \
#       --build-arg DEBIAN_IMAGE=ppa-local/debian:bookworm -t ppa-local/prometheus:bookworm docker/base

ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
# The Debian release fixes the package's version (bookworm: 2.42).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
