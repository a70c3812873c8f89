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
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    -c) CONNS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    -o) WORKDIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-floodgate) FLOODGATE_TARGET=0; shift ;;
    --nginx) PLAIN_NGINX=1; shift ;;
    --h2) H2=1; shift ;;
    --streams) STREAMS=$2; shift 2 ;;
    --proxy)
      [ $# -ge 4 ] || { echo "--proxy needs NAME PORT COMMAND" >&2; exit 2; }
      EXTRA_NAMES+=("$2"); EXTRA_PORTS+=("$3"); EXTRA_CMDS+=("$4"); shift 4 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for n in "$ROUNDS" "$DURATION" "$WARMUP" "$THREADS" "$STREAMS"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "not a number: $n" >&2; exit 2; }
done
[ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || { echo "need at least 1 round of 1 s" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
UPSTREAM_PORT=${UPSTREAM_PORT:-18080}
NGINX_LR_PORT=${NGINX_LR_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18090}
FLOODGATE_PORT=${FLOODGATE_PORT:-18085}
UPSTREAM="127.0.0.1:$UPSTREAM_PORT"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
FLOODGATE="$TARGET_DIR/release/floodgate"
export UPSTREAM FLOODGATE

# ---- cpus: load generator and upstream on one, proxies on another --------------------------------
if [ "$(nproc)" -ge 2 ]; then
  LOADGEN_CPU=${LOADGEN_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
else
  LOADGEN_CPU=${LOADGEN_CPU:-0} PROXY_CPU=${PROXY_CPU:-0}
  echo "# one cpu only: wrk, the upstream and the proxies share it; ratios will mostly show that" >&2
fi

# ---- tools -----------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "$H2" = 1 ]; then command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client); fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); elif command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2; exit 1
  fi
  echo "# installing ${missing[*]}" >&2
  "${SUDO[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

if [ "$FLOODGATE_TARGET" = 1 ] || [ ${#EXTRA_NAMES[@]} -gt 0 ]; then
  if [ "$BUILD" = 1 ]; then
    echo "# cargo build --release --locked" >&2
    (cd "$REPO" && cargo build --release --locked >&2)
  fi
  if [ "$FLOODGATE_TARGET" = 1 ] && [ ! -x "$FLOODGATE" ]; then
    echo "no $FLOODGATE: build it (cargo build --release --locked) or drop --no-build" >&2; exit 1
  fi
fi

# ---- work directory and process bookkeeping --------------------------------------------------
WORKDIR=${WORKDIR:-$(mktemp -d /tmp/floodgate-bench.XXXXXX)}
mkdir -p "$WORKDIR"; WORKDIR=$(cd "$WORKDIR" && pwd)
chmod 755 "$WORKDIR"   # nginx's workers run as another user when started as root
RESULTS="$WORKDIR/results.tsv"; : >"$RESULTS"

STARTED=()   # process-group leaders started here (setsid), stopped on exit
stop_all() {
  local pid i
  for pid in "${STARTED[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do
    for i in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  STARTED=()
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # NAME CPU COMMAND...: its own session (so its whole tree stops together), pinned
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORKDIR/$name.log" 2>&1 </dev/null &
  STARTED+=("$!")
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() { # PORT NAME: up to 10 s
  local i
  for i in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
  echo "$2 is not listening on 127.0.0.1:$1 after 10 s; see $WORKDIR/$2.log" >&2; return 1
}

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
for port in "$UPSTREAM_PORT" "${PORTS[@]}"; do
  if listening "$port"; then echo "127.0.0.1:$port is taken; stop what listens there" >&2; exit 1; fi
done

nginx_conf() { # FILE BODY: an nginx config that writes only into the work directory
  cat >"$1" <<EOF
worker_processes 1;
pid $1.pid;
error_log $1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORKDIR/tmp-body; proxy_temp_path $WORKDIR/tmp-proxy;
  fastcgi_temp_path $WORKDIR/tmp-fcgi; uwsgi_temp_path $WORKDIR/tmp-uwsgi; scgi_temp_path $WORKDIR/tmp-scgi;
  keepalive_requests 100000000; keepalive_timeout 120s;
$2
}
EOF
}
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

cat >"$WORKDIR/report.lua" <<'EOF'
wrk.headers["x-api-key"] = "bench-key"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.0f %d %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
run_wrk() { # PORT CONNS SECS -> "req/s p50_us p99_us non2xx socket_errors"
  timeout $(($3 + 20)) taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$2" -d"$3"s \
    -s "$WORKDIR/report.lua" "http://127.0.0.1:$1/" 2>&1 | awk '/^RESULT/ { print $2, $3, $4, $5, $6 }' || true
}

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
run_load() { if [ "$H2" = 1 ]; then run_h2load "$@"; else run_wrk "$@"; fi; }
LAT1=p50_us LAT2=p99_us
[ "$H2" = 1 ] && LAT1=mean_us LAT2=max_us

echo "# $(nproc) cpus ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
echo "# $("$NGINX_BIN" -v 2>&1) | $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2) | floodgate $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
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
      read -r rps p50 p99 non2xx errors <<<"$(run_load "${PORTS[$i]}" "$c" "$DURATION")" || true
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
awk -F'\t' -v order="${NAMES[*]}" -v conns="$CONNS" -v lat1="$LAT1" -v lat2="$LAT2" '
function median(a, n,   i, j, t) {
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return n == 0 ? 0 : (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
}
{ rounds[$1] = 1; rps[$1, $2, $3] = $4; p50[$1, $2, $3] = $5; p99[$1, $2, $3] = $6; bad[$2, $3] += $7 + ($8 > 0 ? $8 : 0) }
END {
  printf "%-14s %5s %10s %6s %9s %6s %9s %6s %7s %6s\n", "target", "conns", "req/s", "x_lr", lat1, "x_lr", lat2, "x_lr", "spread", "errors"
  nt = split(order, T, " "); nc = split(conns, C, " ")
  for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti++) {
    t = T[ti]; c = C[ci]; n = 0; m = 0
    for (r in rounds) {
      n++; a[n] = rps[r, t, c] + 0; b[n] = p50[r, t, c] + 0; d[n] = p99[r, t, c] + 0
      if (n == 1 || a[n] < lo) lo = a[n]; if (n == 1 || a[n] > hi) hi = a[n]
      ref = rps[r, "nginx_lr", c]
      if (ref > 0 && p50[r, "nginx_lr", c] > 0 && p99[r, "nginx_lr", c] > 0) {
        m++; x1[m] = a[n] / ref; x2[m] = b[n] / p50[r, "nginx_lr", c]; x3[m] = d[n] / p99[r, "nginx_lr", c]
      }
    }
    med = median(a, n)
    r1 = m ? sprintf("%.2f", median(x1, m)) : "-"; r2 = m ? sprintf("%.2f", median(x2, m)) : "-"
    r3 = m ? sprintf("%.2f", median(x3, m)) : "-"; spread = (med > 0) ? 100 * (hi - lo) / med : 0
    printf "%-14s %5s %10.0f %6s %9.0f %6s %9.0f %6s %6.0f%% %6d\n", t, c, med, r1, median(b, n), r2,
      median(d, n), r3, spread, bad[t, c]
  }
}' "$RESULTS"
echo "(per-run rows: $RESULTS; logs: $WORKDIR)"
