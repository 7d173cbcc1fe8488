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
cargo test --no-run --test fault >/dev/null 2>&1 || cargo test --no-run --test fault

mkdir -p target/fault-seeds
failed=()
for _ in $(seq 1 "$count"); do
  seed=$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))
  dedup=memory
  (( RANDOM % 2 )) && dedup=redis
  log="target/fault-seeds/$seed-$dedup.log"
  if DATALOY_FAULT_SEED=$seed DATALOY_FAULT_DEDUP=$dedup \
      cargo test -q --test fault -- --ignored seed_from_env --nocapture >"$log" 2>&1; then
    echo "seed $seed ($dedup): passed"
  else
    echo "seed $seed ($dedup): FAILED, see $log"
    grep -h "^FINDING" "$log" | sed 's/^/    /' || true
    failed+=("$seed:$dedup")
  fi
done

echo "== $count seeds, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
