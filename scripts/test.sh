#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the tests need, checks
# formatting and lints, then runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "== deployment files"
./scripts/check-deploy.sh

echo "== services"
source scripts/services.sh

echo "== tests"
cargo test

echo "== the OpenAPI contract, attacked by Schemathesis against the real binary"
./scripts/schemathesis.sh

echo "== fuzzing, a short bounded pass (docs/fuzzing.md)"
./scripts/fuzz.sh --short
