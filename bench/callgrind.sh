#!/usr/bin/env bash
# bench/callgrind.sh — instructions per proxied request, counted by valgrind's callgrind.
#
# Wall-time benchmarks on a shared machine move by ±15% per round; the instructions floodgate
# executes for a request do not. This runs BINARY (one worker) under callgrind in front of an
# nginx upstream answering `200 ok`, warms it up with wrk, counts instructions only while wrk
# sends `-c CONNS` connections for `-d SECS` (the counters zeroed before, dumped after), and
# divides the total by the requests floodgate_requests_total counted in that window. Binds 127.0.0.1 only; every wait is bounded;
# what it starts is stopped on exit. See docs/performance.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/callgrind.sh BINARY [-c CONNS] [-d SECS] [--config FILE] [--h2]

  BINARY        a floodgate binary (e.g. target/release/floodgate)
  -c CONNS      connections (default 4)
  -d SECS       measured seconds (default 6)
  --config FILE floodgate's config (default config/bench.toml)
  --h2          HTTP/2 prior knowledge (h2load, floodgate with h2c) instead of HTTP/1.1 (wrk)
Environment: CG_PORT (default 18185: floodgate; admin and upstream on the next two ports);
CG_OUT=FILE keeps the measured profile there (for callgrind_annotate, on a build with
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only).
EOF
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
BIN=$(realpath "$1"); shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONNS=4 DURATION=6 CONFIG="$REPO/config/bench.toml" H2=0
while [ $# -gt 0 ]; do
  case "$1" in
    -c) CONNS=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    --config) CONFIG=$(realpath "$2"); shift 2 ;;
    --h2) H2=1; shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for tool in valgrind callgrind_control nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
[ "$H2" = 0 ] || command -v h2load >/dev/null || { echo "h2load is required for --h2" >&2; exit 1; }

PORT=${CG_PORT:-18185}
ADMIN=$((PORT + 1)) UPSTREAM_PORT=$((PORT + 2))
WORK=$(mktemp -d /tmp/floodgate-callgrind.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_listening() { # PORT SECONDS
  local deadline=$((SECONDS + $2))
  until curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; do
    [ $SECONDS -lt "$deadline" ] || { echo "nothing listens on $1 after $2 s" >&2; exit 1; }
    sleep 0.2
  done
}

cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/upstream.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp-body; proxy_temp_path $WORK/tmp-proxy;
  fastcgi_temp_path $WORK/tmp-fcgi; uwsgi_temp_path $WORK/tmp-uwsgi; scgi_temp_path $WORK/tmp-scgi;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 "ok"; } }
}
EOF
nginx -e "$WORK/upstream.err" -c "$WORK/upstream.conf" -g "daemon off;" &
PIDS+=($!)
wait_listening "$UPSTREAM_PORT" 10

config="$CONFIG"
if [ "$H2" = 1 ]; then
  config="$WORK/floodgate.toml"
  sed 's/^\[server\]/[server]\nh2c = true/' "$CONFIG" >"$config"
fi
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" --config "$config" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" --workers 1 2>"$WORK/floodgate.log" &
FG=$!
PIDS+=($FG)
wait_listening "$PORT" 60

load() { # SECONDS
  if [ "$H2" = 1 ]; then
    h2load -c "$CONNS" -m 1 -D "$1" -H 'x-api-key: bench' "http://127.0.0.1:$PORT/" >/dev/null
  else
    wrk -t1 -c "$CONNS" -d "${1}s" -H 'x-api-key: bench' "http://127.0.0.1:$PORT/" >/dev/null
  fi
}
requests() {
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^floodgate_requests_total/ { n += $2 } END { print n + 0 }'
}

load 2
before=$(requests)
callgrind_control --zero "$FG" >/dev/null
load "$DURATION"
callgrind_control --dump=measured "$FG" >/dev/null
after=$(requests)
kill -TERM "$FG"
for _ in $(seq 1 300); do kill -0 "$FG" 2>/dev/null || break; sleep 0.1; done
# The dump made at the end of the window holds what ran since the counters were zeroed.
measured=$(grep -l '^desc: Trigger: .*measured' "$WORK"/callgrind.out* | head -1)
instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$measured")
[ -z "${CG_OUT:-}" ] || cp "$measured" "$CG_OUT"
count=$((after - before))
[ "$count" -gt 0 ] || { echo "no request was counted" >&2; exit 1; }
echo "binary:        $BIN"
echo "requests:      $count ($([ "$H2" = 1 ] && echo h2load || echo wrk) -c$CONNS, ${DURATION}s, one worker under callgrind)"
echo "instructions:  $instructions"
echo "per request:   $((instructions / count))"
