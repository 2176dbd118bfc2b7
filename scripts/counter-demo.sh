#!/usr/bin/env bash
# A walkthrough with the counter actor: starts a local tern cluster on the embedded
# store, builds and deploys the counter actor, calls it, restarts the
# cluster and shows the state survived. Also makes a call-only token and
# shows it can call but not deploy. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
TERN="$PWD/target/debug/tern"
DATA="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

start() {
  rm -f "$DATA/cluster.json"
  "$TERN" dev --data "$DATA" --base-port 0 2>"$DATA/dev.log" &
  PID=$!
  # Wait (bounded) for the cluster file that `tern dev` writes once it listens.
  for _ in $(seq 1 300); do
    [ -s "$DATA/cluster.json" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$DATA/dev.log"; echo "tern dev exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$DATA/cluster.json" ] || { echo "tern dev did not start" >&2; exit 1; }
  # The CLI reads the cluster's CA (tls/ca.pem) and admin token
  # (admin.token) from the data directory.
  export TERN_DATA="$DATA" TERN_ENDPOINT
  TERN_ENDPOINT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pops"][0]["endpoint"])' "$DATA/cluster.json")"
}

start
echo "== cluster at $TERN_ENDPOINT"
WASM="$("$TERN" build examples/counter | tail -n 1)"
echo "== built $WASM"
"$TERN" deploy counter "$WASM"
for n in 1 2 3; do "$TERN" call counter/demo incr "{\"by\": $n}"; done
echo "== a durable alarm, and the event its turn pushes to a subscriber"
"$TERN" call counter/demo set_alarm '{"in_ms": 500, "tag": "hello"}'
"$TERN" subscribe counter/demo alarms --count 1 --timeout-s 30 | tee "$DATA/alarm.json"
grep -q '"hello"' "$DATA/alarm.json"
echo "== a token that may only call counter actors"
CALLER="$("$TERN" token create --scope call --types counter --label demo)"
"$TERN" call counter/demo get --token "$CALLER"
if "$TERN" deploy counter "$WASM" --token "$CALLER" 2>"$DATA/refused.txt"; then
  echo "a call token deployed" >&2; exit 1
fi
cat "$DATA/refused.txt"
grep -q PERMISSION_DENIED "$DATA/refused.txt"
echo "== SIGKILL the cluster and start it again on the same data"
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
start
GOT="$("$TERN" call counter/demo get)"
echo "$GOT"
"$TERN" status
python3 -c 'import json,sys; v=json.loads(sys.argv[1])["value"]; sys.exit(0 if v==6 else f"expected 6, got {v}")' "$GOT"
kill -TERM "$PID"; wait "$PID" || true; PID=""
echo "== demo OK: state survived SIGKILL"
