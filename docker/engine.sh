#!/usr/bin/env bash
# Starts or stops a Docker engine on this machine for the container tests, by PID.
#
#   docker/engine.sh start   prints "running" if an engine already answers (left alone), else
#                            starts dockerd (log outputs/docker/dockerd.log, PID in
#                            outputs/docker/dockerd.pid), waits for `docker info`, prints "started"
#   docker/engine.sh stop    stops the dockerd this script started (and only that one)
#
# DOCKER (default /usr/bin/docker, Debian's client) is the client used for `docker info`.
# ENGINE_CPU_SHARES (optional): CPU weight of the engine's container group on cgroup v1.
#   There, every process outside a cgroup weighs as much as ALL containers together (the
#   group `docker` has the default weight 1024), so on a host busy with other processes the
#   containers starve (seen here: Flower's ServerApp took minutes to start and its task token
#   expired). 1024 per container that works at once gives them the share of as many processes.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
STATE=outputs/docker
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
START_TIMEOUT_S=${ENGINE_START_TIMEOUT_S:-90}
STOP_TIMEOUT_S=${ENGINE_STOP_TIMEOUT_S:-60}

answers() { "$DOCKER" info >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if answers; then echo running; exit 0; fi
    command -v dockerd >/dev/null || { echo "engine: dockerd not installed (make system-deps)" >&2; exit 1; }
    mkdir -p "$STATE"
    nohup dockerd >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq "$START_TIMEOUT_S"); do
      if answers; then
        group=/sys/fs/cgroup/cpu/docker
        if [ -n "${ENGINE_CPU_SHARES:-}" ]; then
          mkdir -p "$group" 2>/dev/null && echo "$ENGINE_CPU_SHARES" >"$group/cpu.shares" 2>/dev/null \
            || echo "engine: could not set $group/cpu.shares" >&2
        fi
        echo started
        exit 0
      fi
      if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
      sleep 1
    done
    echo "engine: dockerd did not answer within ${START_TIMEOUT_S}s; log $LOG:" >&2
    tail -n 20 "$LOG" >&2
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
    ;;
  stop)
    [ -f "$PIDFILE" ] || { echo "engine: not started by this script; left alone"; exit 0; }
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq "$STOP_TIMEOUT_S"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$PIDFILE"
    echo stopped
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
