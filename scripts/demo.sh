#!/usr/bin/env bash
# The demo, in the foreground: Kafka on 127.0.0.1:9092, the gateway on
# 127.0.0.1:8080 with config/demo.yaml, an echo worker behind POST /demo/echo,
# and the autoscaler scaling `slow` workers behind POST /demo/work (it prints
# every scaling decision). Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export KAFKA_PORT=9092
started_kafka=false
gateway_pid=
worker_pid=
autoscaler_pid=

stop() {
  local pid=$1
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

cleanup() {
  trap - EXIT INT TERM
  stop "$autoscaler_pid"
  stop "$worker_pid"
  stop "$gateway_pid"
  if $started_kafka; then
    scripts/kafka.sh down
  fi
  echo "demo: stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "demo: building the gateway and the example workers"
cargo build --bin osmosis-gateway --bin osmosis-autoscaler --examples
bin="${CARGO_TARGET_DIR:-target}/debug"

if ! scripts/kafka.sh status; then
  scripts/kafka.sh up
  started_kafka=true
fi

"$bin"/osmosis-gateway --config config/demo.yaml --create-topics &
gateway_pid=$!

deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null http://127.0.0.1:8080/readyz 2>/dev/null; do
  kill -0 "$gateway_pid" 2>/dev/null || { echo "demo: the gateway exited" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "demo: the gateway is not ready after 60s" >&2; exit 1; }
  sleep 0.2
done

"$bin"/examples/echo --brokers 127.0.0.1:9092 --channel demo.echo &
worker_pid=$!
"$bin"/osmosis-autoscaler local --brokers 127.0.0.1:9092 --topic demo.work \
  --min-replicas 0 --max-replicas 6 --lag-per-replica 10 --idle-seconds 20 \
  --scale-down-stabilization-seconds 15 --poll-interval-ms 1000 -- \
  "$bin"/examples/slow --brokers 127.0.0.1:9092 --channel demo.work --work-ms 500 --progress-steps 2 --echo &
autoscaler_pid=$!

# A token for the protected route, minted with the demo's development key.
mint_token=("$bin"/osmosis-gateway token --jwks-file config/demo-jwks.json
  --issuer osmosis-demo --audience osmosis-demo --subject alice --scope demo:orders)
token=$("${mint_token[@]}")

cat <<'MSG'

  Osmosis is running: gateway on http://127.0.0.1:8080, Kafka on 127.0.0.1:9092.
  Watch the events channel in one terminal (Server-Sent Events):

    curl -N http://127.0.0.1:8080/v1/channels/demo.events

  and publish into it, or try the other routes, in another:

    curl -i -X POST http://127.0.0.1:8080/demo/events -H 'content-type: application/json' -d '{"hello":"osmosis"}'
    curl -i -X POST http://127.0.0.1:8080/demo/devices/sensor-7/events -d 'temperature=21.5'
    curl -i -X POST http://127.0.0.1:8080/demo/echo -H 'content-type: text/plain' -d 'hello, worker'
    curl -N -X POST http://127.0.0.1:8080/demo/echo -H 'accept: text/event-stream' -d 'as events'
    curl -i -X POST http://127.0.0.1:8080/demo/echo -H 'Prefer: respond-async' -d 'later'
    curl -i http://127.0.0.1:8080/v1/requests/<id from the 202>
    curl -s http://127.0.0.1:8080/metrics | grep osmosis_gateway_requests_total

  Watch the autoscaler scale slow workers up on a burst, and down after it:

    for i in $(seq 100); do curl -s -o /dev/null -X POST http://127.0.0.1:8080/demo/work -H 'Prefer: respond-async' -d "job $i"; done

MSG
cat <<MSG
  The browser page (subscribes, publishes, follows a request's events):

    http://127.0.0.1:8080/ui/

  POST /demo/orders needs a token with scope demo:orders; the echo worker's
  reply names the caller it saw (x-echo-caller). Without the token: 401.

    curl -i -X POST http://127.0.0.1:8080/demo/orders -H 'Authorization: Bearer $token' -d 'one order'

  The token was minted with (add --claim tenant=acme, --lifetime 15m...):

    ${mint_token[*]}

  Ctrl-C stops the worker, the gateway and the Kafka broker the demo started.

MSG
wait -n "$gateway_pid" "$worker_pid" "$autoscaler_pid"
