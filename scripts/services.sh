#!/usr/bin/env bash
# Installs and starts the services the tests talk to, when they are not running already:
# a Kafka-protocol broker (tansu) on 127.0.0.1:9092, RabbitMQ on 127.0.0.1:5672 (guest/guest)
# and Redis on 127.0.0.1:6379. Sourced by scripts/test.sh; a tansu it starts is stopped when the
# calling shell exits (RabbitMQ and Redis are left running, as the machine provides them).
set -euo pipefail

TANSU_VERSION=0.6.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
SERVICES_LOG_DIR="${SERVICES_LOG_DIR:-$(pwd)/target/services}"
mkdir -p "$SERVICES_LOG_DIR"

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2 tenths=${3:-200}
  for _ in $(seq 1 "$tenths"); do
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

apt_install() {
  echo "== installing $* from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if port_open 5672; then
    echo "== RabbitMQ is listening on 127.0.0.1:5672"
    return
  fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if rabbitmqctl -q status >/dev/null 2>&1; then
    echo "== starting the stopped RabbitMQ application"
    rabbitmqctl -q start_app
  else
    echo "== starting RabbitMQ"
    rabbitmq-server -detached
  fi
  wait_for_port 5672 RabbitMQ 1200
  rabbitmqctl -q await_startup
}

ensure_redis() {
  # The fault test (tests/fault/) starts redis-servers of its own, so the binary must be here
  # even when a Redis is already listening.
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if port_open 6379; then
    echo "== Redis is listening on 127.0.0.1:6379"
    return
  fi
  echo "== starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile "$SERVICES_LOG_DIR/redis.log"
  wait_for_port 6379 Redis
}

STARTED_PIDS=()
stop_started_services() {
  for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_started_services EXIT

ensure_tansu
ensure_rabbitmq
ensure_redis
