#!/usr/bin/env bash
# User-space instructions the gateway executes per notification, counted by callgrind (so the
# figure does not depend on how busy the machine is): the gateway runs under valgrind with the
# file sink, a warm-up of WARMUP requests is sent, the counters are zeroed, REQUESTS notifications
# are sent one after another over one keep-alive connection, and once the file sink holds them
# all the counters are dumped. Every thread of the process counts (HTTP workers, spool writer,
# relay, span export). BENCHMARKS.md, "Trace context and OpenTelemetry", has the figures.
#
# Usage: scripts/callgrind-request.sh BINARY [TRACE] [EXTRA_TOML_LINE...]
#   TRACE: none (default) | traceparent (each request carries traceparent and tracestate)
#   e.g. scripts/callgrind-request.sh target/release/dataloy-gateway traceparent \
#          '[tracing.otlp]' 'endpoint = "http://127.0.0.1:14318/v1/traces"'
# KEEP=FILE keeps the dump there (for callgrind_annotate). Needs valgrind and python3.
# CONCURRENCY=N sends with the load tool (target/release/examples/loadgen, or LOADGEN=PATH), N
# requests in flight: group commits and relay batches then hold many notifications, as under load
# (TRACE must be none).
set -euo pipefail
bin=$1
trace=${2:-none}
shift $(( $# >= 2 ? 2 : 1 ))
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
admin=$((port + 1))
{
  printf '%s\n' "[server]" "bind = \"127.0.0.1:$port\"" "workers = 2" "[admin]" \
    "bind = \"127.0.0.1:$admin\"" "[spool]" "dir = \"$work/spool\"" "[sinks.file]" \
    "path = \"$work/events.jsonl\"" "fsync = false" "[log]" 'level = "warn"'
  printf '%s\n' "$@"
} >"$work/gateway.toml"

valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$bin" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$admin/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

send() { # FROM COUNT
  if [[ -n ${CONCURRENCY:-} ]]; then
    [[ $trace == none ]] || { echo "CONCURRENCY needs TRACE none" >&2; return 1; }
    "${LOADGEN:-target/release/examples/loadgen}" --requests "$2" --concurrency "$CONCURRENCY" \
      --url "http://127.0.0.1:$port/webhooks/dataloy" >/dev/null
    return
  fi
  python3 - "$port" "$1" "$2" "$trace" <<'PY'
import http.client, sys
port, start, count, trace = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sample = open("tests/fixtures/bunker-order-updated.json", "rb").read()
headers = {"content-type": "application/json"}
if trace == "traceparent":
    headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers["tracestate"] = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
connection = http.client.HTTPConnection("127.0.0.1", port)
for i in range(start, start + count):
    body = sample.replace(b"1573335-244070007", b"cg-%d" % i, 1)
    connection.request("POST", "/webhooks/dataloy", body, headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}

wait_lines() {
  for _ in $(seq 1 600); do
    [[ $(wc -l <"$work/events.jsonl" 2>/dev/null || echo 0) -ge $1 ]] && return 0
    sleep 0.2
  done
  echo "the file sink did not get $1 lines" >&2
  return 1
}

send 0 "$WARMUP"
wait_lines "$WARMUP"
callgrind_control -z "$pid" >/dev/null
send "$WARMUP" "$REQUESTS"
wait_lines $((WARMUP + REQUESTS))
callgrind_control -d "$pid" >/dev/null
sleep 1
# One dump of the whole process (threads are combined); its `summary:` (or `totals:`) line.
total=$(grep -h -m1 -E '^(summary|totals):' "$work"/callgrind.out.* | awk '{s += $2} END {print s}')
[[ -n ${KEEP:-} ]] && cat "$work"/callgrind.out.* >"$KEEP"
echo "$(basename "$bin") trace=$trace concurrency=${CONCURRENCY:-1} extra='$*':" \
  "$total instructions for $REQUESTS requests," \
  "$((total / REQUESTS)) per request"
