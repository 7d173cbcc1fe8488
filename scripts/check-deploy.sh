#!/usr/bin/env bash
# Validates the deployment files: Prometheus config and alert rules (promtool), the live
# /metrics exposition of the real binary (promtool check metrics), and that every YAML and JSON
# file parses. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml

python3 -c 'import yaml' 2>/dev/null || pip install --quiet pyyaml
python3 - <<'PY'
import json, pathlib, sys
import yaml
for path in sorted(pathlib.Path("deploy").rglob("*.y*ml")) + [pathlib.Path("docker-compose.yml")]:
    list(yaml.safe_load_all(path.read_text()))
for path in sorted(pathlib.Path("deploy").rglob("*.json")):
    json.loads(path.read_text())
print("deploy files parse")
PY

# The real binary on the embedded default, in a scratch directory, on free ports.
work=$(mktemp -d)
trap 'kill "$gateway" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --quiet --bin dataloy-gateway
DATALOY_GATEWAY__SERVER__BIND=127.0.0.1:18080 DATALOY_GATEWAY__ADMIN__BIND=127.0.0.1:19090 \
DATALOY_GATEWAY__SPOOL__DIR="$work/spool" DATALOY_GATEWAY__SINKS__FILE__PATH="$work/events.jsonl" \
  "${CARGO_TARGET_DIR:-target}/debug/dataloy-gateway" --config config/default.toml >"$work/gateway.log" 2>&1 &
gateway=$!
ready=no
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:19090/health/ready >/dev/null 2>&1 && { ready=yes; break; }
  sleep 0.1
done
if [ "$ready" != yes ]; then
  echo "the gateway did not become ready; its log:" >&2
  cat "$work/gateway.log" >&2
  exit 1
fi
curl -fsS -X POST http://127.0.0.1:18080/webhooks/dataloy -H "content-type: application/json" --data-binary @tests/fixtures/bunker-order-updated.json >/dev/null
curl -fsS http://127.0.0.1:19090/metrics | promtool check metrics
echo "/metrics passes promtool check metrics"
