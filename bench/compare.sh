#!/usr/bin/env bash
# bench/compare.sh — floodgate beside nginx + limit_req on loopback, measured in the same rounds.
#
# Starts a fast upstream (nginx answering `200 ok`), the reference proxy `nginx_lr` (nginx
# proxy_pass + limit_req keyed by x-api-key, at a rate that never refuses) and floodgate (the
# release build of this checkout on config/bench.toml), plus any --proxy you add; runs
# interleaved wrk rounds against each and prints every run, then medians and ratios to nginx_lr
# measured in the same round. wrk and the upstream are pinned to one cpu, the proxies to
# another. Binds 127.0.0.1 only; every wait is bounded; every process it starts is stopped on
# exit. See docs/performance.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
  cat <<'EOF'
Usage: bench/compare.sh [options] [--proxy NAME PORT 'COMMAND']...

  -r N          rounds (default 5); the order of the targets rotates every round
  -d SECS       measured seconds per run (default 8)
  -w SECS       warm-up seconds before each run (default 2)
  -c "64 8"     wrk connection counts (default "64")
  -t N          wrk threads (default 1)
  -o DIR        work directory for configs, logs and results (default: a new one under /tmp)
  --no-build    do not run `cargo build --release --locked` first
  --no-floodgate  leave this checkout's floodgate out (compare --proxy entries only)
  --nginx       also measure nginx's plain proxy_pass (no limit_req): the noise floor
  --h2          HTTP/2 with prior knowledge (h2c) from the client instead of HTTP/1.1: h2load
                instead of wrk, nginx's listeners with `http2`, floodgate with `h2c = true`;
                the latency columns are then h2load's mean and max per request
  --streams N   with --h2: streams each connection keeps open (default 1)
  --proxy NAME PORT CMD
                another proxy: CMD runs under `bash -c` pinned to the proxy cpu and must listen
                on 127.0.0.1:PORT and forward to $UPSTREAM; $FLOODGATE is this checkout's release
                binary. Repeatable, e.g. to compare two builds.
  -h            this help

Environment: LOADGEN_CPU (default 0: wrk and the upstream), PROXY_CPU (default 1: the proxies;
on a one-cpu machine both are 0), UPSTREAM_PORT (18080), NGINX_LR_PORT (18091),
NGINX_PORT (18090), FLOODGATE_PORT (18085, admin on the next port), CARGO_TARGET_DIR.
Installs wrk and nginx (and h2load, for --h2) with apt-get when they are missing (as root, else
with sudo).
EOF
}

ROUNDS=5 DURATION=8 WARMUP=2 CONNS="64" THREADS=1 WORKDIR="" BUILD=1 FLOODGATE_TARGET=1 PLAIN_NGINX=0
H2=0 STREAMS=1
EXTRA_NAMES=() EXTRA_PORTS=() EXTRA_CMDS=()
while [ $# -gt 0 ]; do
  bench_option "$@"
  if [ "$BENCH_SHIFT" -gt 0 ]; then shift "$BENCH_SHIFT"; continue; fi
  case "$1" in
    -c) CONNS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    --no-floodgate) FLOODGATE_TARGET=0; shift ;;
    --nginx) PLAIN_NGINX=1; shift ;;
    --h2) H2=1; shift ;;
    --streams) STREAMS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
bench_numbers "$ROUNDS" "$DURATION" "$WARMUP" "$THREADS" "$STREAMS"

REPO=$(cd "$(dirname "$0")/.." && pwd)
UPSTREAM_PORT=${UPSTREAM_PORT:-18080}
NGINX_LR_PORT=${NGINX_LR_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18090}
FLOODGATE_PORT=${FLOODGATE_PORT:-18085}
UPSTREAM="127.0.0.1:$UPSTREAM_PORT"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
FLOODGATE="$TARGET_DIR/release/floodgate"
export UPSTREAM FLOODGATE

bench_cpus

# ---- tools -----------------------------------------------------------------------------------
needed=(wrk:wrk nginx:nginx taskset:util-linux)
[ "$H2" = 1 ] && needed+=(h2load:nghttp2-client)
bench_need "${needed[@]}"
NGINX_BIN=$(bench_bin nginx)

if [ "$FLOODGATE_TARGET" = 1 ] || [ ${#EXTRA_NAMES[@]} -gt 0 ]; then
  if [ "$BUILD" = 1 ]; then
    bench_build "$REPO"
  fi
  if [ "$FLOODGATE_TARGET" = 1 ] && [ ! -x "$FLOODGATE" ]; then
    echo "no $FLOODGATE: build it (cargo build --release --locked) or drop --no-build" >&2; exit 1
  fi
fi

# ---- work directory and process bookkeeping --------------------------------------------------
bench_workdir "$WORKDIR" floodgate-bench
RESULTS="$WORKDIR/results.tsv"; : >"$RESULTS"
bench_traps

# ---- targets ---------------------------------------------------------------------------------
NAMES=(nginx_lr) PORTS=("$NGINX_LR_PORT") CMDS=("")
if [ "$PLAIN_NGINX" = 1 ]; then NAMES+=(nginx); PORTS+=("$NGINX_PORT"); CMDS+=(""); fi
BENCH_CONFIG="$REPO/config/bench.toml"
if [ "$H2" = 1 ]; then # the same config, serving h2c
  BENCH_CONFIG="$WORKDIR/bench-h2c.toml"
  sed 's/^\[server\]$/[server]\nh2c = true/' "$REPO/config/bench.toml" >"$BENCH_CONFIG"
fi
export BENCH_CONFIG
if [ "$FLOODGATE_TARGET" = 1 ]; then
  NAMES+=(floodgate); PORTS+=("$FLOODGATE_PORT")
  CMDS+=("\"\$FLOODGATE\" --config '$BENCH_CONFIG' --listen 127.0.0.1:$FLOODGATE_PORT --upstream http://\$UPSTREAM --admin 127.0.0.1:$((FLOODGATE_PORT + 1))")
fi
for i in "${!EXTRA_NAMES[@]}"; do
  NAMES+=("${EXTRA_NAMES[$i]}"); PORTS+=("${EXTRA_PORTS[$i]}"); CMDS+=("${EXTRA_CMDS[$i]}")
done
ports_free "$UPSTREAM_PORT" "${PORTS[@]}"

nginx_conf "$WORKDIR/upstream.conf" "
  server { listen $UPSTREAM backlog=4096; location / { return 200 \"ok\"; } }"
H2_LISTEN=""; [ "$H2" = 1 ] && H2_LISTEN=" http2"
plain=""
if [ "$PLAIN_NGINX" = 1 ]; then plain="
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096$H2_LISTEN;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"; fi
nginx_conf "$WORKDIR/nginx.conf" "
  upstream up { server $UPSTREAM; keepalive 256; keepalive_requests 100000000; }
  limit_req_zone \$http_x_api_key zone=perkey:10m rate=100000000r/s;
  server { listen 127.0.0.1:$NGINX_LR_PORT backlog=4096$H2_LISTEN;
    location / { limit_req zone=perkey burst=1000000 nodelay;
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }$plain"

start upstream "$LOADGEN_CPU" "$NGINX_BIN" -e "$WORKDIR/upstream.conf.err" -c "$WORKDIR/upstream.conf" -g "daemon off;"
wait_listening "$UPSTREAM_PORT" upstream
start nginx "$PROXY_CPU" "$NGINX_BIN" -e "$WORKDIR/nginx.conf.err" -c "$WORKDIR/nginx.conf" -g "daemon off;"
for i in "${!NAMES[@]}"; do
  if [ -n "${CMDS[$i]}" ]; then start "${NAMES[$i]}" "$PROXY_CPU" bash -c "${CMDS[$i]}"; fi
done
for i in "${!NAMES[@]}"; do wait_listening "${PORTS[$i]}" "${NAMES[$i]}"; done

printf 'wrk.headers["x-api-key"] = "bench-key"\n%s\n' "$WRK_DONE" >"$WORKDIR/report.lua"

# h2load's answer as the same five fields; latency: its mean and max per request, in µs.
run_h2load() { # PORT CONNS SECS
  timeout $(($3 + 20)) taskset -c "$LOADGEN_CPU" h2load -c"$2" -m"$STREAMS" -t"$THREADS" -D"$3" \
    -H "x-api-key: bench-key" "http://127.0.0.1:$1/" 2>&1 | awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1e6 }
    /^finished in/ { rps = $4 }
    /^requests:/ { errors = $12 + $14 + $16 }
    /^status codes:/ { non2xx = $5 + $7 + $9 }
    /^time for request:/ { mean = us($6); max = us($5) }
    END { if (rps != "") printf "%.0f %.0f %.0f %d %d\n", rps, mean, max, non2xx, errors }' || true
}
run_load() { # PORT CONNS SECS
  if [ "$H2" = 1 ]; then run_h2load "$@"; else run_wrk "http://127.0.0.1:$1/" "$2" "$3" "$WORKDIR/report.lua" "$THREADS"; fi
}
LAT1=p50_us LAT2=p99_us
[ "$H2" = 1 ] && LAT1=mean_us LAT2=max_us

bench_banner "$REPO" "$NGINX_BIN"
if [ "$H2" = 1 ]; then
  echo "# h2c: h2load -t$THREADS -c{$CONNS} -m$STREAMS -D$DURATION after ${WARMUP}s warm-up, $ROUNDS round(s); h2load + upstream on cpu $LOADGEN_CPU, proxies on cpu $PROXY_CPU; $WORKDIR"
else
  echo "# wrk -t$THREADS -c{$CONNS} -d${DURATION}s after ${WARMUP}s warm-up, $ROUNDS round(s); wrk + upstream on cpu $LOADGEN_CPU, proxies on cpu $PROXY_CPU; $WORKDIR"
fi
printf '%-5s %-14s %5s %10s %9s %9s %7s %7s\n' round target conns req/s "$LAT1" "$LAT2" non2xx errors

# ---- rounds: every target once per round, in an order that rotates ----------------------------
N=${#NAMES[@]}
for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((N - 1))); do
    i=$(( (k + round - 1) % N ))
    for c in $CONNS; do
      if [ "$WARMUP" -gt 0 ]; then run_load "${PORTS[$i]}" "$c" "$WARMUP" >/dev/null; fi
      read -r rps p50 p99 non2xx errors _ <<<"$(run_load "${PORTS[$i]}" "$c" "$DURATION")" || true
      [ -n "${rps:-}" ] || { echo "no result for ${NAMES[$i]}" >&2; rps=0 p50=0 p99=0 non2xx=0 errors=-1; }
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${NAMES[$i]}" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errors" >>"$RESULTS"
      printf '%-5s %-14s %5s %10s %9s %9s %7s %7s\n' "$round" "${NAMES[$i]}" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errors"
    done
  done
done

# ---- summary: medians, and medians of the per-round ratios to nginx_lr ------------------------
echo
echo "medians over $ROUNDS round(s); x_lr = median of per-round ratios to nginx_lr (same round);"
echo "spread = (max - min) / median of req/s"
bench_summary "$RESULTS" "${NAMES[*]}" "$CONNS" conns "4:req/s 5:$LAT1 6:$LAT2"
echo "(per-run rows: $RESULTS; logs: $WORKDIR)"
