#!/usr/bin/env bash
# Runs the end-to-end fault test (tests/fault/, docs/fault-test.md) on N random seeds, half with
# Redis dedup and half with memory dedup, and prints the seeds that failed. A failing seed goes
# into REGRESSIONS in tests/fault/main.rs. DATALOY_FAULT_FEATURES=… enables operations still
# awaiting a fix (plan::AWAITING_FIX).
#   scripts/fault-seeds.sh [N]        (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10}

source scripts/services.sh

# Build once, then run copies: another build into the same target directory cannot change the
# binaries under the seeds.
work="$(pwd)/target/fault-seeds"
mkdir -p "$work"
test_bin=$(cargo test --no-run --test fault --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\/fault-[^"]*\)".*/\1/p' | tail -1)
[ -n "$test_bin" ] || { echo "could not build the fault test" >&2; exit 1; }
cp "$test_bin" "$work/fault"
cp "$(dirname "$test_bin")/../dataloy-gateway" "$work/dataloy-gateway"
export DATALOY_FAULT_GATEWAY_BIN="$work/dataloy-gateway"

failed=()
for _ in $(seq 1 "$count"); do
  seed=$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))
  dedup=memory
  (( RANDOM % 2 )) && dedup=redis
  log="$work/$seed-$dedup.log"
  if DATALOY_FAULT_SEED=$seed DATALOY_FAULT_DEDUP=$dedup \
      "$work/fault" --exact regression_seeds_and_the_requested_one --nocapture >"$log" 2>&1; then
    echo "seed $seed ($dedup): passed"
  else
    echo "seed $seed ($dedup): FAILED, see $log"
    grep -h "^FINDING" "$log" | sed 's/^/    /' || true
    failed+=("$seed:$dedup")
  fi
done

echo "== $count seeds, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
