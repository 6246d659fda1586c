"""Container health check of the PPA images (HEALTHCHECK in docker/Dockerfile).

    ppa-healthcheck http PORT   GET /health of a Flower HTTP API on 127.0.0.1:PORT
                                (SuperLink, SuperNode); tries plain HTTP, then HTTPS
    ppa-healthcheck grpc PORT   gRPC health Check of a SuperExec's --health-server-address

Exit status 0 when healthy, 1 otherwise (what Docker expects). The HTTPS attempt does not
verify the certificate: the check talks to its own container over loopback, where only
liveness matters; peers verify the certificate against the CA as usual.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request
from http import HTTPStatus

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 4.0


def http_healthy(port: int) -> bool:
    """True when GET /health answers 200 over HTTP or (self-check) HTTPS."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for scheme, context in (("http", None), ("https", unverified)):
        try:
            with urllib.request.urlopen(
                f"{scheme}://{LOOPBACK}:{port}/health", timeout=TIMEOUT_S, context=context
            ) as answer:
                if answer.status == HTTPStatus.OK:
                    return True
        except (OSError, ValueError):
            continue
    return False


def grpc_healthy(port: int) -> bool:
    """True when the gRPC health service reports SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("http", "grpc") or not argv[1].isdigit():
        print("usage: ppa-healthcheck http|grpc PORT", file=sys.stderr)
        return 2
    port = int(argv[1])
    healthy = http_healthy(port) if argv[0] == "http" else grpc_healthy(port)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
