#!/usr/bin/env bash
# Installs and starts the services the tests talk to, when they are not running already:
# a Kafka-protocol broker (tansu) on 127.0.0.1:9092. Sourced by scripts/test.sh; a broker it
# starts is stopped when the calling shell exits.
set -euo pipefail

TANSU_VERSION=0.6.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
SERVICES_LOG_DIR="${SERVICES_LOG_DIR:-$(pwd)/target/services}"
mkdir -p "$SERVICES_LOG_DIR"

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2
  for _ in $(seq 1 200); do
    port_open "$port" && return 0
    sleep 0.1
  done
  echo "$name did not start listening on 127.0.0.1:$port; see $SERVICES_LOG_DIR" >&2
  return 1
}

ensure_tansu() {
  if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "== installing tansu $TANSU_VERSION (a Kafka-protocol broker; about 10 minutes, once)"
    cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql
  fi
  export TANSU_BIN
  TANSU_BIN="$(command -v tansu)"
  if port_open 9092; then
    echo "== a Kafka-protocol broker is already listening on 127.0.0.1:9092"
  else
    echo "== starting tansu on 127.0.0.1:9092"
    tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine memory://tansu/ >"$SERVICES_LOG_DIR/tansu.log" 2>&1 &
    STARTED_PIDS+=("$!")
    wait_for_port 9092 tansu
  fi
}

STARTED_PIDS=()
stop_started_services() {
  for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_started_services EXIT

ensure_tansu
