#!/usr/bin/env bash
# Runs the measurements of BENCHMARKS.md on this machine: the HTTP-only baseline and the gateway
# (durable spool, dedup on) with the file, Kafka and RabbitMQ sinks, each loaded by the same
# loadgen; latency at half of the Kafka rate, for the gateway and, as a control, the baseline;
# exactly-once delivery with resent ids; start-up time; memory per dedup entry.
# Usage: scripts/bench.sh [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-20000}
CONCURRENCY=${2:-64}
source scripts/services.sh
cargo build --release --quiet --bin dataloy-gateway --examples
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap 'cleanup; stop_started_services' EXIT

wait_ready() {
  for _ in $(seq 1 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.02; done
  echo "not ready: $1" >&2; return 1
}

# Starts the gateway on a config written to $work/$1.toml; the rest of the arguments are TOML.
gateway() {
  local name=$1; shift
  printf '%s\n' "[server]" 'bind = "127.0.0.1:18081"' "workers = 2" "[admin]" 'bind = "127.0.0.1:19091"' \
    "[spool]" "dir = \"$work/spool-$name\"" "[log]" 'level = "warn"' "$@" >"$work/$name.toml"
  local started=$(date +%s%N)
  "$bin/dataloy-gateway" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_ready http://127.0.0.1:19091/health/ready
  echo "start-up to ready: $(( ($(date +%s%N) - started) / 1000000 )) ms"
}

stop_gateway() {
  # Group commit, and the server's own view of the tail: requests and spool fsyncs within 10 ms.
  curl -fsS http://127.0.0.1:19091/metrics | grep -E \
    -e '^dataloy_gateway_spool_(appends|fsyncs)_total' \
    -e '^dataloy_gateway_request_duration_seconds_bucket\{outcome="accepted".*le="(0.01|\+Inf)"' \
    -e '^dataloy_gateway_spool_sync_duration_seconds_bucket\{operation="append",le="(0.01|0.05|0.25|1|\+Inf)"' || true
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

loadgen() { "$bin"/examples/loadgen --requests "$REQUESTS" --concurrency "$CONCURRENCY" "$@"; }

echo "## HTTP-only baseline (actix, same route, body read, no validation/dedup/spool/sink)"
"$bin"/examples/baseline_server 127.0.0.1:18090 2 & pids+=($!)
sleep 0.5
loadgen --url http://127.0.0.1:18090/webhooks/dataloy
kill "${pids[-1]}"

echo "## gateway, file sink"
gateway file "[sinks.file]" "path = \"$work/events.jsonl\""
loadgen --url http://127.0.0.1:18081/webhooks/dataloy --verify "file:$work/events.jsonl"
stop_gateway

topic="bench-$$.PortCall"
echo "## gateway, Kafka sink (tansu on 127.0.0.1:9092)"
gateway kafka "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"bench-$$.{objectType}\""
out=$(loadgen --url http://127.0.0.1:18081/webhooks/dataloy --verify "kafka:127.0.0.1:9092/$topic")
echo "$out"
stop_gateway

rate=$(echo "$out" | sed -n 's/.* = \([0-9]*\) req\/s.*/\1/p')
half=$(( rate / 2 ))
echo "## gateway, Kafka sink, at half that rate ($half req/s)"
gateway kafka-half "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"bench-$$-half.{objectType}\""
loadgen --url http://127.0.0.1:18081/webhooks/dataloy --rate "$half" --verify "kafka:127.0.0.1:9092/bench-$$-half.PortCall"
stop_gateway

echo "## HTTP-only baseline at the same rate ($half req/s): the machine's own tail, as a control"
"$bin"/examples/baseline_server 127.0.0.1:18090 2 & pids+=($!)
sleep 0.5
loadgen --url http://127.0.0.1:18090/webhooks/dataloy --rate "$half"
kill "${pids[-1]}"

echo "## gateway, RabbitMQ sink"
gateway rabbitmq "[sinks.rabbitmq]" "exchange = \"bench-$$\""
LOADGEN_EXCHANGE="bench-$$" loadgen --url http://127.0.0.1:18081/webhooks/dataloy \
  --verify "rabbitmq:amqp://guest:guest@127.0.0.1:5672/%2f#bench-$$"
stop_gateway

echo "## gateway, Kafka sink, 20 % of the requests resending an earlier id (Dataloy's retries)"
gateway kafka-dup "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"bench-$$-dup.{objectType}\""
loadgen --url http://127.0.0.1:18081/webhooks/dataloy --duplicates 0.2 --verify "kafka:127.0.0.1:9092/bench-$$-dup.PortCall"
stop_gateway

echo "## memory per dedup entry"
"$bin"/examples/dedup_memory 1000000
