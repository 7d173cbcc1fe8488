#!/usr/bin/env bash
# Runs the measurements of BENCHMARKS.md on this machine: the HTTP-only baseline and the gateway
# (durable spool, dedup on) with the file, Kafka and RabbitMQ sinks, each loaded by the same
# loadgen; latency at half of the Kafka rate, for the gateway and, as a control, the baseline;
# exactly-once delivery with resent ids; start-up time; memory per dedup entry.
#
# The machine is shared and its speed drifts from second to second, so each gateway run is
# bracketed by a baseline run just before and just after it, its ratio is taken against the mean
# of the two, and the whole comparison is repeated ROUNDS times; the summary gives every ratio
# and their median.
# Usage: scripts/bench.sh [REQUESTS] [CONCURRENCY] [ROUNDS] [HALF_RATE_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-60000}
CONCURRENCY=${2:-64}
ROUNDS=${3:-3}
HALF_RATE_SECONDS=${4:-30}
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

# The request rate a loadgen report states.
rate_of() { sed -n 's/.* = \([0-9]*\) req\/s.*/\1/p' <<<"$1"; }
# The p99 a loadgen report states, in ms.
p99_of() { sed -n 's/.* p99 \([0-9.]*\) .*/\1/p' <<<"$1"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# Starts the gateway on a config written to $work/$1.toml; the rest of the arguments are TOML.
gateway() {
  gateway_name=$1; shift
  printf '%s\n' "[server]" 'bind = "127.0.0.1:18081"' "workers = 2" "[admin]" 'bind = "127.0.0.1:19091"' \
    "[spool]" "dir = \"$work/spool-$gateway_name\"" "[log]" 'level = "warn"' "$@" >"$work/$gateway_name.toml"
  local started=$(date +%s%N)
  "$bin/dataloy-gateway" --config "$work/$gateway_name.toml" >"$work/$gateway_name.log" 2>&1 &
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
  rm -rf "$work/spool-$gateway_name"
}

loadgen() { "$bin"/examples/loadgen --concurrency "$CONCURRENCY" "$@"; }

# One loadgen run against the bare baseline server; its report lands in $last_out, its rate in
# $last_rate.
baseline() {
  "$bin"/examples/baseline_server 127.0.0.1:18090 2 & pids+=($!)
  wait_for_port 18090 baseline_server
  local out
  out=$(loadgen --url http://127.0.0.1:18090/webhooks/dataloy "$@")
  echo "$out"
  last_out=$out
  last_rate=$(rate_of "$out")
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

# One gateway run with the sink named by $1 (file, kafka or rabbitmq), delivery verified; its
# rate lands in $last_rate.
sink_run() {
  local sink=$1 tag="bench-$$-$2" out
  case $sink in
    file)
      gateway "$tag" "[sinks.file]" "path = \"$work/$tag.jsonl\""
      out=$(loadgen --requests "$REQUESTS" --url http://127.0.0.1:18081/webhooks/dataloy \
        --verify "file:$work/$tag.jsonl")
      rm -f "$work/$tag.jsonl" ;;
    kafka)
      gateway "$tag" "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"$tag.{objectType}\""
      out=$(loadgen --requests "$REQUESTS" --url http://127.0.0.1:18081/webhooks/dataloy \
        --verify "kafka:127.0.0.1:9092/$tag.PortCall") ;;
    rabbitmq)
      gateway "$tag" "[sinks.rabbitmq]" "exchange = \"$tag\""
      out=$(LOADGEN_EXCHANGE="$tag" loadgen --requests "$REQUESTS" \
        --url http://127.0.0.1:18081/webhooks/dataloy --verify "rabbitmq:amqp://guest:guest@127.0.0.1:5672/%2f#$tag") ;;
  esac
  echo "$out"
  last_rate=$(rate_of "$out")
  stop_gateway
}

declare -A ratios rates
sinks=(file kafka rabbitmq)
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round of $ROUNDS"
  echo "## HTTP-only baseline (actix, same route, body read, no validation/dedup/spool/sink)"
  baseline --requests "$REQUESTS"
  before=$last_rate
  for sink in "${sinks[@]}"; do
    echo "## gateway, $sink sink"
    sink_run "$sink" "$sink-r$round"
    rate=$last_rate
    echo "## HTTP-only baseline, after the $sink run"
    baseline --requests "$REQUESTS"
    ratio=$(awk -v r="$rate" -v a="$before" -v b="$last_rate" 'BEGIN {printf "%.3f", 2 * r / (a + b)}')
    echo "ratio: $sink $rate req/s against the baselines around it ($before, $last_rate): $ratio"
    ratios[$sink]+=" $ratio"
    rates[$sink]+=" $rate"
    before=$last_rate
  done
done

half=$(( $(median <<<"${rates[kafka]}") / 2 ))
half_requests=$(( half * HALF_RATE_SECONDS ))
echo "## gateway, Kafka sink, at half its median rate ($half req/s, $half_requests requests)"
gateway kafka-half "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"bench-$$-half.{objectType}\""
out=$(loadgen --requests "$half_requests" --url http://127.0.0.1:18081/webhooks/dataloy \
  --rate "$half" --verify "kafka:127.0.0.1:9092/bench-$$-half.PortCall")
echo "$out"
half_p99=$(p99_of "$out")
half_machine=$(grep '^machine:' <<<"$out" || true)
stop_gateway

echo "## HTTP-only baseline at the same rate ($half req/s): the machine's own tail, as a control"
baseline --requests "$half_requests" --rate "$half"
control_p99=$(p99_of "$last_out")
control_machine=$(grep '^machine:' <<<"$last_out" || true)

echo "## gateway, Kafka sink, 20 % of the requests resending an earlier id (Dataloy's retries)"
gateway kafka-dup "[sinks.kafka]" 'brokers = "127.0.0.1:9092"' "topic = \"bench-$$-dup.{objectType}\""
loadgen --requests "$REQUESTS" --url http://127.0.0.1:18081/webhooks/dataloy --duplicates 0.2 \
  --verify "kafka:127.0.0.1:9092/bench-$$-dup.PortCall"
stop_gateway

echo "## memory per dedup entry"
"$bin"/examples/dedup_memory 1000000

echo "# summary ($ROUNDS rounds, $REQUESTS requests, $CONCURRENCY in flight)"
for sink in "${sinks[@]}"; do
  echo "$sink: rates${rates[$sink]} req/s; ratios to the bracketing baselines${ratios[$sink]}; median $(median <<<"${ratios[$sink]}")"
done
echo "Kafka at $half req/s for $HALF_RATE_SECONDS s: p99 $half_p99 ms; $half_machine"
echo "control at $half req/s for $HALF_RATE_SECONDS s: p99 $control_p99 ms; $control_machine"
