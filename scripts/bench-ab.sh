#!/usr/bin/env bash
# Compares gateway builds (or settings) with one sink, alternating them within each round so the
# machine's drift hits all alike: per round one run of each variant, each followed by a run of the
# HTTP-only baseline, its ratio taken against the baseline runs just before and after it (as in
# scripts/bench.sh). Delivery is verified in every run. The load tool and baseline are this
# checkout's release examples; build them first (scripts/bench.sh does).
# Usage: scripts/bench-ab.sh SINK(file|kafka|rabbitmq) ROUNDS REQUESTS VARIANT...
#   VARIANT = name:directory-holding-dataloy-gateway[:TOML lines, \n between them]
#   e.g. scripts/bench-ab.sh kafka 8 60000 old:../old/target/release new:target/release \
#          'nojournal:target/release:[dedup]\njournal = false'
set -u
sink=$1; rounds=$2; requests=$3; shift 3
cd "$(dirname "$0")/.."
lbin="${CARGO_TARGET_DIR:-target}/release/examples"
work=$(mktemp -d)
rate_of() { sed -n 's/.* = \([0-9]*\) req\/s.*/\1/p' <<<"$1"; }
baseline() {
  $lbin/baseline_server 127.0.0.1:18090 2 & local p=$!
  for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/18090) 2>/dev/null && break; sleep 0.05; done
  last_rate=$(rate_of "$($lbin/loadgen --concurrency 64 --requests $requests --url http://127.0.0.1:18090/webhooks/dataloy)")
  kill $p; wait $p 2>/dev/null
}
declare -A ratios
baseline; before=$last_rate
for r in $(seq $rounds); do
  for v in "$@"; do
    IFS=: read -r name bin extra <<<"$v"
    tag="ab-$$-$name-$r"
    case $sink in
      kafka) st=$'[sinks.kafka]\nbrokers = "127.0.0.1:9092"\ntopic = "'$tag'.{objectType}"'; verify="kafka:127.0.0.1:9092/$tag.PortCall" ;;
      rabbitmq) st=$'[sinks.rabbitmq]\nexchange = "'$tag'"'; verify="rabbitmq:amqp://guest:guest@127.0.0.1:5672/%2f#$tag" ;;
      file) st=$'[sinks.file]\npath = "'$work/$tag.jsonl'"'; verify="file:$work/$tag.jsonl" ;;
    esac
    printf '[server]\nbind = "127.0.0.1:18081"\nworkers = 2\n[admin]\nbind = "127.0.0.1:19091"\n[spool]\ndir = "%s/spool-%s"\n[log]\nlevel = "warn"\n%b\n%s\n' "$work" "$tag" "$extra" "$st" > $work/g.toml
    $bin/dataloy-gateway --config $work/g.toml > $work/$tag.log 2>&1 & gw=$!
    for _ in $(seq 300); do curl -fsS http://127.0.0.1:19091/health/ready >/dev/null 2>&1 && break; sleep 0.02; done
    out=$(LOADGEN_EXCHANGE=$tag $lbin/loadgen --concurrency 64 --requests $requests --url http://127.0.0.1:18081/webhooks/dataloy --verify "$verify" 2>&1)
    rate=$(rate_of "$out"); v_line=$(grep '^verify' <<<"$out" | sed 's/.*: expected/expected/')
    kill $gw; wait $gw 2>/dev/null; rm -rf $work/spool-$tag $work/$tag.jsonl
    baseline
    ratio=$(awk -v r="$rate" -v a="$before" -v b="$last_rate" 'BEGIN {printf "%.3f", 2 * r / (a + b)}')
    echo "round $r $name: $rate req/s, baselines $before $last_rate, ratio $ratio; $v_line"
    ratios[$name]+=" $ratio"; before=$last_rate
  done
done
for v in "$@"; do name=${v%%:*}; echo "$name:${ratios[$name]}; median $(tr ' ' '\n' <<<"${ratios[$name]}" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')"; done
rm -rf $work
