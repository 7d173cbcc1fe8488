#!/usr/bin/env bash
# Schemathesis (PyPI), a tool that did not write the contract, against the real binary: it
# loads the OpenAPI document the gateway serves (GET /openapi.yaml on the admin listener),
# generates valid and invalid requests for every operation of both listeners (examples,
# coverage and fuzzing phases, every check: no 5xx, every status, header, content type and
# body as documented, valid notifications accepted, invalid ones refused, 405 + Allow for other
# methods), and fails on any finding. The gateway runs with bearer auth, a spool in a scratch
# directory and the file sink only: no broker is needed. Called by scripts/test.sh.
#   SCHEMATHESIS_MAX_TIME  seconds for the whole run (default 60)
#   SCHEMATHESIS_SEED      the generator's seed (default: a new one, printed; rerun with it)
# Schemathesis is installed once into a virtualenv under $SCHEMATHESIS_TOOLS_DIR (pinned).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
tools=${SCHEMATHESIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dataloy-gateway/schemathesis}
venv="$tools/venv"
export SCHEMATHESIS_MAX_TIME=${SCHEMATHESIS_MAX_TIME:-60}
export SCHEMATHESIS_SEED=${SCHEMATHESIS_SEED:-$(( (RANDOM << 15) | RANDOM ))}

if [ "$(cat "$venv/.installed" 2>/dev/null)" != "schemathesis==$version" ] \
   || ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "installing schemathesis==$version (PyPI) into $venv"
  rm -rf "$venv" && mkdir -p "$tools" && python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
  echo "schemathesis==$version" > "$venv/.installed"
fi

work=$(mktemp -d)
gateway=""
cleanup() {
  if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --bin dataloy-gateway
# The shared target's binary may be replaced by another build at any time: use a private copy.
cp "${CARGO_TARGET_DIR:-target}/debug/dataloy-gateway" "$work/dataloy-gateway"

read -r port admin_port < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
cat >"$work/gateway.toml" <<TOML
[server]
bind = "127.0.0.1:$port"
max_body_bytes = "64KiB"
[admin]
bind = "127.0.0.1:$admin_port"
[auth]
mode = "bearer"
token = "$token"
[spool]
dir = "$work/spool"
max_bytes = "64MiB"
segment_bytes = "4MiB"
[sinks.file]
path = "$work/events.jsonl"
[log]
format = "json"
level = "info"
TOML
"$work/dataloy-gateway" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
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

echo "schemathesis $version: ${SCHEMATHESIS_MAX_TIME}s, seed $SCHEMATHESIS_SEED (SCHEMATHESIS_SEED=$SCHEMATHESIS_SEED scripts/schemathesis.sh repeats it)"
report_dir=${SCHEMATHESIS_REPORT_DIR:-$work/report}
schemathesis() {
  DATALOY_GATEWAY_PORT=$port DATALOY_GATEWAY_ADMIN_PORT=$admin_port DATALOY_GATEWAY_TOKEN=$token \
    SCHEMATHESIS_CACHE_DIR="$tools/cache" "$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run --no-color \
    --seed "$SCHEMATHESIS_SEED" --report junit --report-dir "$report_dir" \
    "http://127.0.0.1:$admin_port/openapi.yaml" "$@"
}
status=0
schemathesis --max-time "$SCHEMATHESIS_MAX_TIME" || status=$?
# Schemathesis leaves out the operation that serves the document it loaded; asked by name, it
# tests that one too.
schemathesis --max-time 10 --include-path /openapi.yaml || status=$?

if ! kill -0 "$gateway" 2>/dev/null; then
  echo "the gateway died during the run; its log:" >&2
  tail -50 "$work/gateway.log" >&2
  exit 1
fi
if grep -q 'panicked' "$work/gateway.log"; then
  echo "the gateway panicked during the run:" >&2
  grep -m5 'panicked' "$work/gateway.log" >&2
  exit 1
fi
relayed=0
[ -f "$work/events.jsonl" ] && relayed=$(wc -l <"$work/events.jsonl")
echo "the gateway relayed $relayed generated notifications to the file sink"
exit "$status"
