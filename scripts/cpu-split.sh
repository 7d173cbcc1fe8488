#!/usr/bin/env bash
# Where a full-rate run's CPU goes: the broker process against the gateway, by gateway thread
# (utime + stime from /proc, in ticks of 1/100 s), for one run of REQUESTS notifications at 64 in
# flight, delivery verified. Needs the brokers of scripts/services.sh running and the release
# examples built (scripts/bench.sh builds them).
# Usage: scripts/cpu-split.sh BIN_DIR SINK(kafka|rabbitmq) [REQUESTS]   e.g. target/release kafka
#   EXTRA_TOML='...' adds settings (lines separated by \n), e.g. $'[dedup]\njournal = false'.
set -u
cd "$(dirname "$0")/.."
bin=$1; sink=$2; requests=${3:-60000}
work=$(mktemp -d); tag="cpu-$$-$sink"
ticks() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
threads() { for t in /proc/$1/task/*; do echo "$(cat $t/comm | tr ' ' '_') $(awk '{print $14+$15}' $t/stat)"; done | awk '{s[$1]+=$2} END {for (k in s) print k, s[k]}' | sort; }
case $sink in
  kafka) sinktoml=$'[sinks.kafka]\nbrokers = "127.0.0.1:9092"\ntopic = "'$tag'.{objectType}"'; verify="kafka:127.0.0.1:9092/$tag.PortCall"; broker=$(pgrep -f 'tansu broker' | head -1) ;;
  rabbitmq) sinktoml=$'[sinks.rabbitmq]\nexchange = "'$tag'"'; verify="rabbitmq:amqp://guest:guest@127.0.0.1:5672/%2f#$tag"; broker=$(pgrep -f beam.smp | head -1) ;;
esac
printf '[server]\nbind = "127.0.0.1:18081"\nworkers = 2\n[admin]\nbind = "127.0.0.1:19091"\n[spool]\ndir = "%s/spool"\n[log]\nlevel = "warn"\n%s\n' "$work" "$sinktoml" > $work/g.toml
printf '%b\n' "${EXTRA_TOML:-}" >> $work/g.toml
$bin/dataloy-gateway --config $work/g.toml > $work/g.log 2>&1 & gw=$!
for _ in $(seq 300); do curl -fsS http://127.0.0.1:19091/health/ready >/dev/null 2>&1 && break; sleep 0.02; done
threads $gw > $work/t0; b0=$(ticks $broker); s0=$(awk '{print $2+$4}' <(head -1 /proc/stat))
out=$(LOADGEN_EXCHANGE=$tag $bin/examples/loadgen --concurrency 64 --requests $requests --url http://127.0.0.1:18081/webhooks/dataloy --verify "$verify" 2>&1)
threads $gw > $work/t1; b1=$(ticks $broker)
echo "$out" | grep -E 'answered|verify'
echo "broker ($sink) CPU: $(( (b1-b0) )) ticks (1/100 s)"
join $work/t0 $work/t1 | awk '{d=$3-$2; tot+=d; if (d>0) printf "  gateway thread %-22s %5d ticks\n", $1, d} END {printf "  gateway total %d ticks\n", tot}'
kill $gw; wait $gw 2>/dev/null; rm -rf $work
