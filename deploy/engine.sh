#!/usr/bin/env bash
# A Docker engine for `make container` and the container tests.
#   deploy/engine.sh up     use the engine that answers; else, as root with dockerd installed, start one
#   deploy/engine.sh down   stop the dockerd that `up` started (by its PID), and nothing else
# Exit status of `up`: 0 when an engine answers, 3 when none answers and none can be started.
set -euo pipefail

STATE_DIR="${NIDS_ENGINE_STATE_DIR:-/run/nids-engine}"
DATA_ROOT="${NIDS_DOCKER_DATA_ROOT:-/var/lib/docker}"
PIDFILE="$STATE_DIR/dockerd.pid"

answers() { docker info >/dev/null 2>&1; }

up() {
  if answers; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null 2>&1; then
    echo "engine.sh: no Docker engine answers and none can be started here (needs root and dockerd)" >&2
    return 3
  fi
  mkdir -p "$STATE_DIR" "$DATA_ROOT"
  dockerd --data-root "$DATA_ROOT" --pidfile "$STATE_DIR/dockerd.own.pid" >"$STATE_DIR/dockerd.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 60); do
    if answers; then
      echo "engine.sh: started dockerd (pid $(cat "$PIDFILE"), data root $DATA_ROOT); stop it with: $0 down" >&2
      return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  echo "engine.sh: dockerd did not come up; its log ($STATE_DIR/dockerd.log) ends with:" >&2
  tail -20 "$STATE_DIR/dockerd.log" >&2
  down
  return 3
}

down() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
