"""Container health check of the PPA images (HEALTHCHECK in docker/Dockerfile).

    ppa-healthcheck http PORT   GET /health of a Flower HTTP API on 127.0.0.1:PORT
                                (SuperLink, SuperNode); tries plain HTTP, then HTTPS
    ppa-healthcheck grpc PORT   gRPC health Check of a SuperExec's --health-server-address

Exit status 0 when healthy, 1 otherwise (what Docker expects). The check runs inside the
container, on its CPU share (a site may hold a third of a core on a busy host), so the HTTP
check speaks HTTP over a plain socket and loads `ssl` only when plain HTTP is refused. The
HTTPS attempt does not verify the certificate: the check talks to its own container over
loopback, where only liveness matters; peers verify the certificate against the CA as usual.
"""

from __future__ import annotations

import socket
import sys

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 10.0
REQUEST = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"


def _status_ok(sock: socket.socket) -> bool:
    sock.sendall(REQUEST)
    head = sock.recv(64)
    parts = head.split(b" ", 2)  # b"HTTP/1.1", b"200", b"OK\r\n..."
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == b"200"


def http_healthy(port: int) -> bool:
    """True when GET /health answers 200 over HTTP or (self-check) HTTPS."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT_S) as sock:
            if _status_ok(sock):
                return True
    except OSError:
        pass
    import ssl

    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=TIMEOUT_S) as raw,
            unverified.wrap_socket(raw, server_hostname=LOOPBACK) as sock,
        ):
            return _status_ok(sock)
    except OSError:
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
        sys.stderr.write("usage: ppa-healthcheck http|grpc PORT\n")
        return 2
    port = int(argv[1])
    healthy = http_healthy(port) if argv[0] == "http" else grpc_healthy(port)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
