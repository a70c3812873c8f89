#!/usr/bin/env bash
# bench/suite.sh — floodgate beside nginx + limit_req (and HAProxy's stick table) on the
# workloads an API gateway meets: one hot key, 100k Zipf-distributed keys, few and many
# connections, a realistic request, a refusal storm, an open-loop rate, HTTP/2 and TLS, the
# Redis store and the access log. Each scenario starts its own targets, runs interleaved rounds
# (every target once per round, the order rotating) and takes ratios to nginx_lr within a round.
# Every answer is checked: unexpected statuses, socket errors and, in the refusal storm, each
# 429 against the key it refused. --quick runs each scenario for about a second per target and
# exits non-zero on a wrong answer (CI runs it); --cost counts instructions (callgrind), CPU
# time (/proc) and system calls (strace) per request. Binds 127.0.0.1 only; every wait is bounded; every process
# it starts is stopped on exit. See docs/performance.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ALL_SCENARIOS="hot piped zipf conns real storm open h2c h2tls https redis log"
usage() {
  cat <<EOF
Usage: bench/suite.sh [options] [--proxy NAME PORT 'COMMAND']...

  --quick       about a second per target and scenario, one round: checks the answers, not
                the speed, and exits non-zero on a wrong one
  --cost        instructions (callgrind), CPU time (user + system) and system calls (strace)
                per request, floodgate and nginx_lr, for the scenarios hot and real (or those
                of --only: hot, piped, zipf, real, log)
  -r N          rounds (default 5)
  -d SECS       measured seconds per run (default 8)
  -w SECS       warm-up seconds before each run (default 2)
  --only LIST   scenarios, comma-separated (default all): $ALL_SCENARIOS
  -o DIR        work directory for configs, logs and results (default: a new one under /tmp)
  --no-build    do not run \`cargo build --release --locked\` first
  --no-haproxy  leave HAProxy out (it is measured where it applies when haproxy is installed or
                apt-get can install it)
  --proxy NAME PORT CMD
                another floodgate build: CMD runs under \`bash -c\` pinned to the proxy cpu with
                \$CONFIG the scenario's floodgate config and must listen on 127.0.0.1:PORT, e.g.
                '../base/target/release/floodgate --config "\$CONFIG" --listen 127.0.0.1:18095 --admin 127.0.0.1:18096'
  -h            this help

Scenarios: hot (one key, c=64), piped (hot, floodgate's upstream pipelining on), zipf (100k
keys, Zipf s=1, c=256), conns (c=8 and c=1000), real (600-byte head, 2 KiB JSON POST, 16 KiB
answer), storm (9 of 10 requests refused), open (h2load open loop at 50/75/90% of nginx_lr's
hot req/s), h2c and h2tls (h2load -c64 -m10), https (HTTP/1.1 over TLS: keep-alive, and a new
connection per request resuming its session), redis (the Redis store beside the memory store),
log (the access log on in every proxy).

Environment: LOADGEN_CPU (0: wrk, h2load, the upstream, redis-server), PROXY_CPU (1: the
proxies), CARGO_TARGET_DIR. Ports 18080 (upstream), 18085-18088 (floodgate, its Redis twin and
their admin), 18091 (nginx_lr), 18092 (HAProxy), 18379 (redis-server).
EOF
}

ROUNDS=5 DURATION=8 WARMUP=2 WORKDIR="" BUILD=1 QUICK=0 COST=0 HAPROXY_WANTED=1 ONLY=""
EXTRA_NAMES=() EXTRA_PORTS=() EXTRA_CMDS=()
while [ $# -gt 0 ]; do
  bench_option "$@"
  if [ "$BENCH_SHIFT" -gt 0 ]; then shift "$BENCH_SHIFT"; continue; fi
  case "$1" in
    --only) ONLY=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --cost) COST=1; shift ;;
    --no-haproxy) HAPROXY_WANTED=0; shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then ROUNDS=1 DURATION=1 WARMUP=0; fi
bench_numbers "$ROUNDS" "$DURATION" "$WARMUP"
SCENARIOS=${ONLY//,/ }
[ -n "$SCENARIOS" ] || SCENARIOS=$ALL_SCENARIOS
[ "$COST" = 0 ] || [ -n "$ONLY" ] || SCENARIOS="hot real"
for s in $SCENARIOS; do
  [[ " $ALL_SCENARIOS " == *" $s "* ]] || { echo "unknown scenario: $s" >&2; exit 2; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
UPSTREAM_PORT=18080 FLOODGATE_PORT=18085 FLOODGATE_REDIS_PORT=18087 NGINX_LR_PORT=18091
HAPROXY_PORT=18092 REDIS_PORT=18379
UPSTREAM="127.0.0.1:$UPSTREAM_PORT"
FLOODGATE="${CARGO_TARGET_DIR:-$REPO/target}/release/floodgate"
export UPSTREAM FLOODGATE
bench_cpus

# ---- tools ---------------------------------------------------------------------------------------
needed=(wrk:wrk nginx:nginx h2load:nghttp2-client redis-server:redis-server openssl:openssl
  curl:curl taskset:util-linux)
[ "$COST" = 1 ] && needed+=(valgrind:valgrind strace:strace)
bench_need "${needed[@]}"
HAPROXY=""
if [ "$HAPROXY_WANTED" = 1 ] && [ "$COST" = 0 ]; then
  bench_need haproxy:haproxy 2>/dev/null || echo "# haproxy could not be installed: measured without it" >&2
  HAPROXY=$(command -v haproxy || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; } || true)
fi
NGINX_BIN=$(bench_bin nginx)
if [ "$BUILD" = 1 ]; then bench_build "$REPO"; fi
[ -x "$FLOODGATE" ] || { echo "no $FLOODGATE: build it (cargo build --release --locked) or drop --no-build" >&2; exit 1; }

# c=1000 needs a descriptor per connection twice over in the proxies (client and upstream).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge 4096 ] || { echo "ulimit -n is $(ulimit -n): c=1000 needs 4096" >&2; exit 1; }

bench_workdir "$WORKDIR" floodgate-suite
RESULTS="$WORKDIR/results.tsv"; : >"$RESULTS"
WRONG="$WORKDIR/wrong.txt"; : >"$WRONG"
bench_traps
ports_free "$UPSTREAM_PORT" "$FLOODGATE_PORT" "$((FLOODGATE_PORT + 1))" "$FLOODGATE_REDIS_PORT" \
  "$((FLOODGATE_REDIS_PORT + 1))" "$NGINX_LR_PORT" "$HAPROXY_PORT" "$REDIS_PORT" "${EXTRA_PORTS[@]}"
wrong() { echo "WRONG: $*" | tee -a "$WRONG" >&2; }

# ---- fixtures: TLS certificate, the upstream's files, the load scripts -----------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$WORKDIR/key.pem" -out "$WORKDIR/cert.pem" 2>/dev/null
cat "$WORKDIR/cert.pem" "$WORKDIR/key.pem" >"$WORKDIR/haproxy.pem"
chmod 644 "$WORKDIR"/*.pem
mkdir -p "$WORKDIR/www"; chmod 755 "$WORKDIR/www"
# The upstream's 16 KiB JSON answer and the client's 2 KiB JSON body.
json_of_size() { # BYTES FIELD: {"FIELD":"xxx..."} of exactly BYTES bytes
  printf '{"%s":"%s"}' "$2" "$(head -c $(($1 - ${#2} - 7)) /dev/zero | tr '\0' 'x')"
}
json_of_size 16384 images >"$WORKDIR/www/answer.json"
BODY=$(json_of_size 2048 prompt)

NSPENT=9   # the refusal storm's keys whose daily quota (1) is used up before it starts
cat >"$WORKDIR/hot.lua" <<EOF
wrk.headers["x-api-key"] = "bench-key"
$WRK_DONE
EOF
cat >"$WORKDIR/close.lua" <<EOF
wrk.headers["x-api-key"] = "bench-key"
wrk.headers["Connection"] = "close"
$WRK_DONE
EOF
# 100k keys drawn from a Zipf distribution (s = 1): a table of 2^20 key numbers, each key as many
# times as its probability says (every key at least once, bar the rarest few hundred), in an
# order shuffled with a fixed seed; each request takes the next one.
cat >"$WORKDIR/zipf.lua" <<EOF
local N, S, T = 100000, 1.0, 1048576
local reqs, seq, pos = {}, {}, 0
init = function(args)
  local head = string.gsub(wrk.format("GET", "/"), "\r\n\r\n\$", "\r\n")
  local cdf, h = {}, 0
  for k = 1, N do h = h + k ^ -S; cdf[k] = h end
  local k = 1
  for i = 1, T do
    local u = (i - 0.5) / T * h
    while cdf[k] < u do k = k + 1 end
    seq[i] = k
  end
  math.randomseed(20261206)
  for i = T, 2, -1 do local j = math.random(i); seq[i], seq[j] = seq[j], seq[i] end
  for k = 1, N do reqs[k] = head .. "x-api-key: k" .. k .. "\r\n\r\n" end
  pos = math.random(T)
end
request = function() pos = pos % T + 1; return reqs[seq[pos]] end
$WRK_DONE
EOF
# A browser-or-SDK-sized request: a ~600-byte head and a 2 KiB JSON body; a 16 KiB answer.
cat >"$WORKDIR/real.lua" <<EOF
wrk.method = "POST"
wrk.path = "/api/v1/generate"
wrk.body = '$BODY'
wrk.headers["x-api-key"] = "ak_live_7Hq2mZ9xR4vB8nK3pW6tY1sD5fG0jL"
wrk.headers["authorization"] = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyXzQ4MjkxIiwic2NvcGUiOiJnZW5lcmF0ZSIsImV4cCI6MTc5NjYwMDAwMH0.Zq3x"
wrk.headers["user-agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 example-sdk/2.14.1"
wrk.headers["accept"] = "application/json, text/plain, */*"
wrk.headers["accept-encoding"] = "gzip, deflate, br, zstd"
wrk.headers["accept-language"] = "en-US,en;q=0.9"
wrk.headers["content-type"] = "application/json"
wrk.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
wrk.headers["x-request-id"] = "3f2b9c1e-8d4a-4f6e-9b1a-2c7d5e8f0a13"
$WRK_DONE
EOF
# The refusal storm: request i of each thread uses key ok-1 when i % 10 == 0, else spent-(i % 10).
# Every answer is checked against its key: a 200 carries the key the upstream saw (x-echo-key);
# a 429 names the key it refused (nginx_lr and HAProxy: x-refused-key) or shows the spent
# tier's daily limit of 1 (floodgate: x-ratelimit-daily-limit).
cat >"$WORKDIR/storm.lua" <<EOF
local reqs, i = {}, 0
n429, bad, spent200 = 0, 0, 0
threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  for j = 0, 9 do
    reqs[j] = wrk.format("GET", "/storm", { ["x-api-key"] = (j == 0) and "ok-1" or ("spent-" .. j) })
  end
end
request = function() local r = reqs[i]; i = (i + 1) % 10; return r end
local function spent(key) return key ~= nil and string.sub(key, 1, 6) == "spent-" end
response = function(status, headers, body)
  if status == 200 then
    local echo = headers["x-echo-key"]
    if echo == nil then bad = bad + 1 elseif spent(echo) then spent200 = spent200 + 1 end
  elseif status == 429 then
    local key = headers["x-refused-key"]
    if spent(key) or (key == nil and headers["x-ratelimit-daily-limit"] == "1") then
      n429 = n429 + 1
    else
      bad = bad + 1
    end
  else
    bad = bad + 1
  end
end
$WRK_DONE
EOF

# ---- the upstream: 200 "ok", the 16 KiB answer (to a POST too), the storm's echo -----------------
nginx_conf "$WORKDIR/upstream.conf" "
  server { listen $UPSTREAM backlog=4096; root $WORKDIR/www;
    location / { return 200 \"ok\"; }
    location = /storm { add_header x-echo-key \$http_x_api_key; return 200 \"ok\"; }
    # nginx's static files refuse POST (405): redirect it to the same file as a GET
    location = /api/v1/generate { error_page 405 =200 /answer.json; rewrite ^ /answer.json last; }
    location = /answer.json { error_page 405 =200 /answer.json; } }" 8192
start upstream "$LOADGEN_CPU" "$NGINX_BIN" -e "$WORKDIR/upstream.conf.err" -c "$WORKDIR/upstream.conf" -g "daemon off;"
wait_listening "$UPSTREAM_PORT" upstream

# ---- per scenario: the targets' configs -----------------------------------------------------------
scheme_of() { case $1 in h2tls|https) echo https ;; *) echo http ;; esac; }

nginx_lr_conf() { # SCENARIO FILE [MAIN]: nginx + limit_req keyed by x-api-key, never refusing
  local s=$1 listen="" http="" srv="" loc="" zone=10m
  case $s in
    zipf) zone=32m ;;   # ~16k 64-byte states per MB: 100k keys need ~7 MB
    storm)
      http="map \$http_x_api_key \$spent_key { ~^spent- \$http_x_api_key; default \"\"; }
  limit_req_zone \$spent_key zone=spent:1m rate=1r/m;
  map \$status \$refused_key { 429 \$http_x_api_key; default \"\"; }"
      loc="limit_req zone=spent; add_header x-refused-key \$refused_key always;" ;;
    h2c) listen=" http2" ;;
    h2tls) listen=" ssl http2" ;;
    https) listen=" ssl" ;;
    log) srv="access_log $WORKDIR/log-nginx_lr-access.log combined buffer=64k flush=1s;" ;;
  esac
  case $s in h2tls|https)
    http="ssl_certificate $WORKDIR/cert.pem; ssl_certificate_key $WORKDIR/key.pem;
  ssl_session_cache shared:SSL:10m;" ;;
  esac
  nginx_conf "$2" "
  upstream up { server $UPSTREAM; keepalive 1024; keepalive_requests 100000000; }
  limit_req_zone \$http_x_api_key zone=perkey:$zone rate=100000000r/s;
  limit_req_status 429;
  # A refusal is logged at info, below the error log's level: no disk write per 429 (floodgate
  # logs them at debug), and a long storm does not fill the disk with them.
  limit_req_log_level info;
  $http
  server { listen 127.0.0.1:$NGINX_LR_PORT backlog=4096$listen; $srv
    location / { limit_req zone=perkey burst=1000000 nodelay; $loc
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" 8192 "${3:-}"
}

haproxy_conf() { # SCENARIO FILE: a stick table tracking x-api-key, refusing only the storm's spent keys
  local s=$1 bind="" log="" table="store http_req_rate(1s)" deny
  deny="http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }"
  case $s in
    h2c) bind=" proto h2" ;;
    h2tls) bind=" ssl crt $WORKDIR/haproxy.pem alpn h2,http/1.1" ;;
    https) bind=" ssl crt $WORKDIR/haproxy.pem alpn http/1.1" ;;
    log) log="log stdout format raw local0" ;;   # its stdout is the file log-haproxy.log
    storm)
      table="expire 1h store http_req_cnt"
      deny="http-request deny deny_status 429 hdr x-refused-key %[req.hdr(x-api-key)] if { req.hdr(x-api-key) -m beg spent- } { sc_http_req_cnt(0) gt 1 }" ;;
  esac
  cat >"$2" <<EOF
global
  maxconn 4000
  nbthread 1
  $log
defaults
  mode http
  ${log:+log global
  option httplog}
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT$bind
  stick-table type string len 64 size 200k ${table/store/expire 60s store}
  http-request track-sc0 req.hdr(x-api-key)
  $deny
  default_backend be
backend be
  server up $UPSTREAM maxconn 4000
EOF
  [ "$s" != storm ] || sed -i 's/expire 60s expire 1h/expire 1h/' "$2"
}

floodgate_conf() { # SCENARIO FILE: config/bench.toml (a per-key limit never reached) and the scenario's part
  local s=$1
  case $s in
    h2c) sed 's/^\[server\]$/[server]\nh2c = true/' "$REPO/config/bench.toml" ;;
    storm) sed 's/^\[identity\]$/[identity]\ndefault_tier = "bench"/' "$REPO/config/bench.toml" ;;
    *) cat "$REPO/config/bench.toml" ;;
  esac >"$2"
  case $s in
    h2tls|https) printf '\n[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$WORKDIR/cert.pem" "$WORKDIR/key.pem" ;;
    storm)
      printf '\n[[tiers.spent.limits]]\nclasses = ["*"]\nshared = true\nper_day = 1\n\n[accounts]\n'
      for j in $(seq 1 $NSPENT); do printf '"spent-%d" = "spent"\n' "$j"; done ;;
    log) printf '\n[access_log]\npath = "%s"\nformat = "json"\n' "$WORKDIR/log-floodgate-access.log" ;;
    piped) printf '\n[classes.default]\npipeline = true\n' ;;
    redis) ;;
  esac >>"$2"
}

# Targets of a scenario: NAMES, PORTS, CMDS (run under bash -c, pinned to the proxy cpu).
targets() { # SCENARIO
  local s=$1 i
  NAMES=(nginx_lr) PORTS=("$NGINX_LR_PORT")
  nginx_lr_conf "$s" "$WORKDIR/$s-nginx_lr.conf"
  CMDS=("exec '$NGINX_BIN' -e '$WORKDIR/$s-nginx_lr.conf.err' -c '$WORKDIR/$s-nginx_lr.conf' -g 'daemon off;'")
  if [ -n "$HAPROXY" ] && [ "$s" != redis ]; then
    haproxy_conf "$s" "$WORKDIR/$s-haproxy.cfg"
    NAMES+=(haproxy); PORTS+=("$HAPROXY_PORT"); CMDS+=("exec '$HAPROXY' -db -f '$WORKDIR/$s-haproxy.cfg'")
  fi
  floodgate_conf "$s" "$WORKDIR/$s-floodgate.toml"
  NAMES+=(floodgate); PORTS+=("$FLOODGATE_PORT")
  CMDS+=("exec \"\$FLOODGATE\" --config '$WORKDIR/$s-floodgate.toml' --listen 127.0.0.1:$FLOODGATE_PORT --upstream http://\$UPSTREAM --admin 127.0.0.1:$((FLOODGATE_PORT + 1))")
  if [ "$s" = redis ]; then
    floodgate_conf redis "$WORKDIR/redis-floodgate_redis.toml"
    # fail_closed: a Redis that does not answer shows as 503s, never as unchecked admissions
    printf '\n[store]\ntype = "redis"\nurl = "redis://127.0.0.1:%s/0"\ntimeout = "50ms"\non_failure = "fail_closed"\n' \
      "$REDIS_PORT" >>"$WORKDIR/redis-floodgate_redis.toml"
    NAMES+=(floodgate_redis); PORTS+=("$FLOODGATE_REDIS_PORT")
    CMDS+=("exec \"\$FLOODGATE\" --config '$WORKDIR/redis-floodgate_redis.toml' --listen 127.0.0.1:$FLOODGATE_REDIS_PORT --upstream http://\$UPSTREAM --admin 127.0.0.1:$((FLOODGATE_REDIS_PORT + 1))")
  fi
  for i in "${!EXTRA_NAMES[@]}"; do
    NAMES+=("${EXTRA_NAMES[$i]}"); PORTS+=("${EXTRA_PORTS[$i]}")
    CMDS+=("export CONFIG='$WORKDIR/$s-floodgate.toml'; ${EXTRA_CMDS[$i]}")
  done
}

groups_of() { # SCENARIO -> its measured groups
  case $1 in
    conns) echo c8 c1000 ;;
    open) echo open50 open75 open90 ;;
    https) echo https httpsnew ;;
    *) echo "$1" ;;
  esac
}
conns_of() { # GROUP
  case $1 in c8) echo 8 ;; c1000) echo 1000 ;; zipf) echo 256 ;; *) echo 64 ;; esac
}

# ---- load generators ------------------------------------------------------------------------------
percentiles() { # LOG (h2load --log-file: start_us status duration_us) -> "p50 p99 p99.9 max non2xx n"
  local bad
  bad=$(awk -F'\t' '$2 < 200 || $2 > 299 { n++ } END { print n + 0 }' "$1")
  cut -f3 "$1" | sort -n | awk -v bad="$bad" '
    { v[NR] = $1 }
    function at(q,   i) { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] }
    END { if (NR) printf "%d %d %d %d %d %d\n", at(0.50), at(0.99), at(0.999), v[NR], bad, NR }'
}

run_h2load() { # URL CONNS SECS [h2load options] -> the RESULT fields (latencies from its log file)
  local url=$1 conns=$2 secs=$3 log="$WORKDIR/h2load.log" out p50 p99 p999 max bad n
  shift 3
  rm -f "$log"
  out=$(timeout $((secs + 20)) taskset -c "$LOADGEN_CPU" h2load -c"$conns" -D"$secs" \
    -H "x-api-key: bench-key" --log-file="$log" "$@" "$url" 2>&1) || true
  [ -s "$log" ] || return 0
  read -r p50 p99 p999 max bad n <<<"$(percentiles "$log")"
  rm -f "$log"
  awk -v p50="$p50" -v p99="$p99" -v p999="$p999" -v max="$max" -v bad="$bad" -v n="$n" -v secs="$secs" '
    /^requests:/ { errors = $12 + $14 + $16 }
    END { printf "%.0f %d %d %d %d %d %d 0 0 %d\n", n / secs, p50, p99, bad, errors, p999, max, n }' <<<"$out"
}

# Open loop, two ways. With oha (`cargo install oha`; OHA names its binary, else it is looked
# for on PATH and in ~/.cargo/bin): 64 connections take requests from one schedule of RATE a
# second, and --latency-correction counts each latency from when its request was due, however
# long it waited for a free connection (no coordinated omission). Without it, h2load (below).
OHA=${OHA:-$(command -v oha || { [ -x "$HOME/.cargo/bin/oha" ] && echo "$HOME/.cargo/bin/oha"; } || true)}
run_open_oha() { # URL RATE SECS -> the RESULT fields and `held` (0: oha corrects every latency)
  timeout $(($3 + 20)) taskset -c "$LOADGEN_CPU" "$OHA" -z "$3s" -c 64 -q "$2" --latency-correction \
    --no-tui --output-format json -H "x-api-key: bench-key" "$1" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin); s = d["summary"]; p = d["latencyPercentiles"]
codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
n = sum(codes.values()); ok = sum(v for k, v in codes.items() if 200 <= k < 300)
errors = sum(v for k, v in (d.get("errorDistribution") or {}).items() if k != "aborted due to deadline")
us = lambda v: round((v or 0) * 1e6)
print(round(s["requestsPerSec"]), us(p["p50"]), us(p["p99"]), n - ok, errors, us(p["p99.9"]), us(s["slowest"]), 0, 0, n, 0)' || true
}

# Without oha: h2load sends at a fixed rate whatever the answers' pace: each of OPEN_CONNS
# connections sends a request every OPEN_CONNS / RATE seconds (--rps), and its log gives every
# request's start and duration. HTTP/1.1 sends one request at a time on a connection, so a
# request due while the one before it on its connection is unanswered starts late and its wait
# would go unseen (coordinated omission). With 256 connections a connection's requests are
# 5.7 ms apart at 45k req/s: only an answer slower than that can hold the next one back, and
# the run counts those answers (`held`, the last field): when it is 0, every latency is counted
# from when its request was due; otherwise at most that many requests started late.
OPEN_CONNS=256
run_open() { # URL RATE SECS -> the RESULT fields and `held`
  local url=$1 rate=$2 secs=$3 log="$WORKDIR/open.log" out p50 p99 p999 max bad n held
  rm -f "$log"
  out=$(timeout $((secs + 20)) taskset -c "$LOADGEN_CPU" h2load --h1 -c"$OPEN_CONNS" -t1 \
    --rps="$(awk -v r="$rate" -v c="$OPEN_CONNS" 'BEGIN { printf "%.3f", r / c }')" -D"$secs" \
    -H "x-api-key: bench-key" --log-file="$log" "$url" 2>&1) || true
  [ -s "$log" ] || return 0
  held=$(awk -F'\t' -v gap="$(awk -v r="$rate" -v c="$OPEN_CONNS" 'BEGIN { print 1e6 * c / r }')" \
    '$3 > gap { n++ } END { print n + 0 }' "$log")
  read -r p50 p99 p999 max bad n <<<"$(percentiles "$log")"
  rm -f "$log"
  awk -v p50="$p50" -v p99="$p99" -v p999="$p999" -v max="$max" -v bad="$bad" -v n="$n" -v secs="$secs" -v held="$held" '
    /^requests:/ { errors = $12 + $14 + $16 }
    END { printf "%.0f %d %d %d %d %d %d 0 0 %d %d\n", n / secs, p50, p99, bad, errors, p999, max, n, held }' <<<"$out"
}

run_load() { # SCENARIO GROUP PORT SECS -> the RESULT fields
  local s=$1 g=$2 port=$3 secs=$4 url
  url="$(scheme_of "$s")://127.0.0.1:$port"
  case $g in
    hot|piped|c8|c1000|redis|log|https) run_wrk "$url/" "$(conns_of "$g")" "$secs" "$WORKDIR/hot.lua" ;;
    httpsnew) run_wrk "$url/" 64 "$secs" "$WORKDIR/close.lua" ;;
    zipf) run_wrk "$url/" 256 "$secs" "$WORKDIR/zipf.lua" ;;
    real) run_wrk "$url/api/v1/generate" 64 "$secs" "$WORKDIR/real.lua" ;;
    storm) run_wrk "$url/storm" 64 "$secs" "$WORKDIR/storm.lua" ;;
    open*) if [ -n "$OHA" ]; then run_open_oha "$url/" "$(open_rate "${g#open}")" "$secs"
           else run_open "$url/" "$(open_rate "${g#open}")" "$secs"; fi ;;
    h2c|h2tls) run_h2load "$url/" 64 "$secs" -m10 ;;
  esac
}

# ---- answers checked before measuring -------------------------------------------------------------
probe() { # SCENARIO NAME PORT: the answer each target must give; the storm's spent keys used up here
  local s=$1 name=$2 port=$3 url code j key out
  url="$(scheme_of "$s")://127.0.0.1:$port"
  local c=(curl -sk -m 5 -o /dev/null -H "x-api-key: bench-key")
  case $s in
    real)
      out=$("${c[@]}" -w '%{http_code} %{size_download}' -X POST -H 'content-type: application/json' \
        --data-binary "$BODY" "$url/api/v1/generate") || true
      [ "$out" = "200 16384" ] || wrong "$s $name: POST /api/v1/generate answered '$out', not '200 16384'" ;;
    storm)
      for j in $(seq 1 $NSPENT); do
        key="spent-$j"
        code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "$url/storm") || true
        [ "$code" = 200 ] || wrong "$s $name: the first request of $key got $code, not 200"
        code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "$url/storm") || true
        [ "$code" = 429 ] || wrong "$s $name: the second request of $key got $code, not 429"
      done ;;
    h2c|h2tls)
      out=$("${c[@]}" -w '%{http_code} %{http_version}' $([ "$s" = h2c ] && echo --http2-prior-knowledge || echo --http2) "$url/") || true
      [ "$out" = "200 2" ] || wrong "$s $name: answered '$out', not '200 2' (HTTP/2)" ;;
    https)
      out=$("${c[@]}" -w '%{http_code}' --http1.1 "$url/") || true
      [ "$out" = 200 ] || wrong "$s $name: answered '$out', not 200"
      # five reconnections with the first one's session: each must resume it
      j=$(timeout 20 openssl s_client -connect "127.0.0.1:$port" -reconnect -tls1_2 </dev/null 2>/dev/null | grep -c '^Reused') || true
      [ "${j:-0}" -ge 5 ] || wrong "$s $name: ${j:-0} of 5 TLS reconnections resumed the session" ;;
    *)
      out=$("${c[@]}" -w '%{http_code}' "$url/") || true
      [ "$out" = 200 ] || wrong "$s $name: answered '$out', not 200" ;;
  esac
}
redis_calls() { # the scripts redis-server has run (EVALSHA and EVAL calls)
  timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT; printf 'INFO commandstats\r\nQUIT\r\n' >&3; cat <&3" 2>/dev/null |
    awk -F'[:=,]' '/^cmdstat_eval(sha)?:/ { n += $3 } END { print n + 0 }' || echo 0
}

# A run's answers: no unexpected status, no socket error; in the storm, the 429s nine in ten.
check_run() { # SCENARIO GROUP NAME non2xx errors n429 spent200 requests
  local s=$1 g=$2 name=$3 non2xx=$4 errors=$5 n429=$6 spent200=$7 requests=$8 allowed=0
  [ "$requests" -gt 0 ] || { wrong "$g $name: no request was answered"; return; }
  [ "$non2xx" = 0 ] || wrong "$g $name: $non2xx unexpected answers"
  [ "$errors" = 0 ] || wrong "$g $name: $errors socket errors"
  if [ "$g" = storm ]; then
    # nginx's limit is a rate (1r/m, burst 0): each spent key is admitted again once a minute
    [ "$name" != nginx_lr ] || allowed=$((NSPENT * (1 + (SECONDS - STORM_T0) / 60)))
    [ "$spent200" -le "$allowed" ] || wrong "$g $name: $spent200 requests of spent keys admitted (at most $allowed)"
    # request i of each connection's thread is refused unless i % 10 == 0; answers still in
    # flight when wrk stops (at most one per connection) are not counted
    awk -v n="$n429" -v r="$requests" 'BEGIN { d = n - 0.9 * r; exit !(d <= 65 && d >= -65) }' ||
      wrong "$g $name: $n429 refusals in $requests answers, not nine in ten"
  fi
}
access_log_of() { # NAME: the file a target's access log goes to in the scenario log
  case $1 in haproxy) echo "$WORKDIR/log-haproxy.log" ;; *) echo "$WORKDIR/log-$1-access.log" ;; esac
}

# ---- a scenario: start its targets, check their answers, run the rounds, stop them ---------------
STORM_T0=0
declare -A LOG_LINES=()
run_scenario() { # SCENARIO
  local s=$1 i k g round pids=() rps p50 p99 non2xx errors p999 max n429 spent200 requests held lines
  targets "$s"
  if [ "$s" = redis ]; then
    start redis-server "$LOADGEN_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
      --appendonly no --dir "$WORKDIR"
    pids+=("${STARTED[-1]}"); wait_listening "$REDIS_PORT" redis-server
  fi
  for i in "${!NAMES[@]}"; do
    start "$s-${NAMES[$i]}" "$PROXY_CPU" bash -c "${CMDS[$i]}"; pids+=("${STARTED[-1]}")
  done
  for i in "${!NAMES[@]}"; do wait_listening "${PORTS[$i]}" "$s-${NAMES[$i]}"; done
  for i in "${!NAMES[@]}"; do probe "$s" "${NAMES[$i]}" "${PORTS[$i]}"; done
  STORM_T0=$SECONDS
  local ntargets=${#NAMES[@]}
  for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((ntargets - 1))); do
      i=$(( (k + round - 1) % ntargets ))
      for g in $(groups_of "$s"); do
        if [ "$WARMUP" -gt 0 ]; then run_load "$s" "$g" "${PORTS[$i]}" "$WARMUP" >/dev/null; fi
        held=0
        read -r rps p50 p99 non2xx errors p999 max n429 spent200 requests held _ \
          <<<"$(run_load "$s" "$g" "${PORTS[$i]}" "$DURATION")" || true
        if [ -z "${rps:-}" ]; then
          wrong "$g ${NAMES[$i]}: no result"; rps=0 p50=0 p99=0 non2xx=0 errors=-1 p999=0 max=0 n429=0 spent200=0 requests=0
        fi
        check_run "$s" "$g" "${NAMES[$i]}" "$non2xx" "$errors" "$n429" "$spent200" "$requests"
        if [ "$s" = log ]; then
          lines=$(wc -l <"$(access_log_of "${NAMES[$i]}")" 2>/dev/null || echo 0)
          LOG_LINES[${NAMES[$i]}]=$(( ${LOG_LINES[${NAMES[$i]}]:-0} + lines ))
          : >"$(access_log_of "${NAMES[$i]}")"   # keep the disk free; the count is kept
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${NAMES[$i]}" "$g" "$rps" \
          "$p50" "$p99" "$non2xx" "$errors" "$p999" "$max" "$n429" "$spent200" "$requests" "${held:-0}" >>"$RESULTS"
        printf '%-5s %-16s %-8s %10s %9s %9s %9s %9s %7s %7s %8s\n' "$round" "${NAMES[$i]}" "$g" "$rps" \
          "$p50" "$p99" "$p999" "$max" "$non2xx" "$errors" "$n429"
      done
    done
  done
  if [ "$s" = redis ]; then # every decision of floodgate_redis was a script run in redis-server
    k=$(awk -F'\t' '$2 == "floodgate_redis" { n += $13 } END { print n + 0 }' "$RESULTS")
    i=$(redis_calls)
    echo "# redis-server ran $i scripts for floodgate_redis's $k measured requests (and its warm-ups)"
    [ "$i" -ge "$k" ] || wrong "redis floodgate_redis: redis-server ran $i scripts for $k requests"
  fi
  stop_groups "${pids[@]}"
  if [ "$s" = log ]; then
    for i in "${!NAMES[@]}"; do
      lines=$(( ${LOG_LINES[${NAMES[$i]}]:-0} + $(wc -l <"$(access_log_of "${NAMES[$i]}")" 2>/dev/null || echo 0) ))
      echo "# access log of ${NAMES[$i]}: $lines lines"
      [ "$lines" -gt 0 ] || wrong "log ${NAMES[$i]}: its access log has no line"
      rm -f "$(access_log_of "${NAMES[$i]}")"
    done
  fi
}

# The open loop's rates: shares of nginx_lr's hot-key maximum in this run. With oha that maximum
# is oha's own, closed loop at 64 connections (oha costs more per request than wrk, and shares
# the load generator's cpu with the upstream: wrk's maximum is a rate oha cannot offer, and every
# target would fall behind the schedule for the generator's sake); with h2load, wrk's hot-key
# req/s (measured here when the scenario hot was not run).
OPEN_BASE=""
open_rate() { awk -v b="$OPEN_BASE" -v p="$1" 'BEGIN { printf "%d", b * p / 100 }'; }
open_base() {
  [ -n "$OHA" ] || OPEN_BASE=$(awk -F'\t' '$2 == "nginx_lr" && $3 == "hot" { print $4 }' "$RESULTS" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }')
  if [ -z "$OPEN_BASE" ]; then
    targets open
    start open-base "$PROXY_CPU" bash -c "${CMDS[0]}"; local pid=${STARTED[-1]}
    wait_listening "$NGINX_LR_PORT" open-base
    if [ -n "$OHA" ]; then
      OPEN_BASE=$(oha_max "http://127.0.0.1:$NGINX_LR_PORT/" "$DURATION")
    else
      OPEN_BASE=$(run_wrk "http://127.0.0.1:$NGINX_LR_PORT/" 64 "$DURATION" "$WORKDIR/hot.lua" | awk '{ print $1 }')
    fi
    stop_groups "$pid"
  fi
  echo "# open loop: nginx_lr's hot-key maximum $OPEN_BASE req/s ($([ -n "$OHA" ] && echo "oha, closed loop" || echo wrk)); offered 50%, 75%, 90% of it"
}
oha_max() { # URL SECS -> req/s: oha closed loop, 64 connections, after a second's warm-up
  timeout 30 taskset -c "$LOADGEN_CPU" "$OHA" -z 1s -c 64 --no-tui -H "x-api-key: bench-key" "$1" >/dev/null 2>&1 || true
  timeout $(($2 + 20)) taskset -c "$LOADGEN_CPU" "$OHA" -z "$2s" -c 64 --no-tui --output-format json \
    -H "x-api-key: bench-key" "$1" 2>/dev/null | python3 -c '
import json, sys
print(round(json.load(sys.stdin)["summary"]["requestsPerSec"]))'
}

# ---- --cost: instructions, CPU time and system calls per request ------------------------------------
# floodgate with one worker and nginx_lr as one process (master_process off), each alone on the
# proxy cpu. Instructions: under valgrind's callgrind, counters zeroed after a warm-up and dumped
# after a run of the scenario's load. CPU time: the process's user + system time (/proc/PID/stat,
# every thread) over a run of the load, without valgrind — the kernel's share included, which is
# most of a proxied request's cost on loopback. System calls: `strace -c -f` attached to the running
# process (every thread) over such a run. Both divided by the requests wrk counted in the run.
cost_start() { # SCENARIO NAME [WRAPPER...]: sets COST_PID and COST_PORT
  local s=$1 name=$2
  shift 2
  case $name in
    floodgate)
      floodgate_conf "$s" "$WORKDIR/$s-floodgate.toml"
      start "cost-$s-$name" "$PROXY_CPU" "$@" "$FLOODGATE" --config "$WORKDIR/$s-floodgate.toml" --workers 1 \
        --listen "127.0.0.1:$FLOODGATE_PORT" --upstream "http://$UPSTREAM" --admin "127.0.0.1:$((FLOODGATE_PORT + 1))"
      COST_PORT=$FLOODGATE_PORT ;;
    nginx_lr)
      nginx_lr_conf "$s" "$WORKDIR/$s-nginx_lr-cost.conf" "master_process off;"
      start "cost-$s-$name" "$PROXY_CPU" "$@" "$NGINX_BIN" -e "$WORKDIR/$s-nginx_lr-cost.conf.err" \
        -c "$WORKDIR/$s-nginx_lr-cost.conf" -g "daemon off;"
      COST_PORT=$NGINX_LR_PORT ;;
  esac
  COST_PID=${STARTED[-1]}
  local i
  for i in $(seq 1 600); do listening "$COST_PORT" && return 0; sleep 0.1; done
  echo "$name is not listening after 60 s; see $WORKDIR/cost-$s-$name.log" >&2; return 1
}
requests_of() { awk '{ print $10 + 0 }' <<<"$1"; }

cost_instructions() { # SCENARIO NAME -> "requests instructions"
  local s=$1 name=$2 out file
  rm -f "$WORKDIR/cg-$s-$name".*
  cost_start "$s" "$name" valgrind --tool=callgrind --callgrind-out-file="$WORKDIR/cg-$s-$name.%p"
  run_load "$s" "$s" "$COST_PORT" 2 >/dev/null
  callgrind_control --zero "$COST_PID" >/dev/null 2>&1
  out=$(run_load "$s" "$s" "$COST_PORT" "$DURATION")
  callgrind_control --dump=measured "$COST_PID" >/dev/null 2>&1
  stop_groups "$COST_PID"
  file=$(grep -l '^desc: Trigger: .*measured' "$WORKDIR/cg-$s-$name".* | head -1)
  echo "$(requests_of "$out") $(awk '/^(summary|totals):/ { print $2; exit }' "$file")"
}

cost_syscalls() { # SCENARIO NAME -> "requests calls top-calls-per-request"
  local s=$1 name=$2 out i strace_pid
  cost_start "$s" "$name"
  run_load "$s" "$s" "$COST_PORT" 2 >/dev/null
  rm -f "$WORKDIR/strace-$s-$name.txt"
  start "strace-$s-$name" "$PROXY_CPU" strace -c -f -p "$COST_PID" -o "$WORKDIR/strace-$s-$name.txt"
  strace_pid=${STARTED[-1]}
  for i in $(seq 1 50); do grep -qs attached "$WORKDIR/strace-$s-$name.log" && break; sleep 0.1; done
  sleep 0.5
  out=$(run_load "$s" "$s" "$COST_PORT" "$DURATION")
  stop_groups "$strace_pid"   # strace detaches on SIGTERM and writes its summary
  for i in $(seq 1 100); do grep -q 'total$' "$WORKDIR/strace-$s-$name.txt" 2>/dev/null && break; sleep 0.1; done
  stop_groups "$COST_PID"
  awk -v n="$(requests_of "$out")" '
    $NF == "total" { total = $4 }
    $1 ~ /^[0-9.]+$/ && $NF != "total" { top = top sprintf(" %s %.2f", $NF, $4 / n) }
    END { printf "%d %d%s\n", n, total, top }' "$WORKDIR/strace-$s-$name.txt"
}

cost_cpu() { # SCENARIO NAME -> "requests cpu-microseconds": user + system time of the proxy's threads over a run
  local s=$1 name=$2 out t0 t1
  cost_start "$s" "$name"
  run_load "$s" "$s" "$COST_PORT" 2 >/dev/null
  t0=$(cpu_ticks "$COST_PID")
  out=$(run_load "$s" "$s" "$COST_PORT" "$DURATION")
  t1=$(cpu_ticks "$COST_PID")
  stop_groups "$COST_PID"
  echo "$(requests_of "$out") $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) ))"
}
cpu_ticks() { # PID: utime + stime in clock ticks of PID and its descendants (every thread of each)
  local pid total=0 p
  for p in $1 $(pgrep -P "$1") $(for c in $(pgrep -P "$1"); do pgrep -P "$c"; done); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") ))
  done
  echo "$total"
}

run_cost() {
  local s name ins sys
  echo "# cost: wrk -c$(conns_of hot) for ${DURATION}s after a 2 s warm-up; floodgate --workers 1, nginx_lr master_process off; proxy cpu $PROXY_CPU"
  printf '%-8s %-10s %10s %12s %10s %10s %10s  %s\n' scenario target requests instructions instr/req cpu_us/req syscalls/req "top system calls per request"
  for s in $SCENARIOS; do
    case $s in hot|piped|zipf|real|log) ;; *) echo "# --cost measures the scenarios hot, piped, zipf, real and log; $s skipped" >&2; continue ;; esac
    for name in floodgate nginx_lr; do
      read -r ireq instructions <<<"$(cost_instructions "$s" "$name")"
      read -r creq micros <<<"$(cost_cpu "$s" "$name")"
      read -r sreq calls top <<<"$(cost_syscalls "$s" "$name")"
      printf '%-8s %-10s %10s %12s %10s %10s %10s  %s\n' "$s" "$name" "$ireq" "$instructions" \
        "$(awk -v i="$instructions" -v n="$ireq" 'BEGIN { printf "%.0f", n ? i / n : 0 }')" \
        "$(awk -v c="$micros" -v n="$creq" 'BEGIN { printf "%.2f", n ? c / n : 0 }')" \
        "$(awk -v c="$calls" -v n="$sreq" 'BEGIN { printf "%.2f", n ? c / n : 0 }')" "$top"
    done
  done
}

# ---- run ---------------------------------------------------------------------------------------------
bench_banner "$REPO" "$NGINX_BIN"
echo "# $([ -n "$HAPROXY" ] && "$HAPROXY" -v | head -1 | cut -d' ' -f1-3 || echo 'no HAProxy') | $(h2load --version | head -1) | $(redis-server --version | cut -d' ' -f1-3)"
if [ "$COST" = 1 ]; then
  run_cost
  exit 0
fi
echo "# scenarios: $SCENARIOS; $ROUNDS round(s) of ${DURATION}s after ${WARMUP}s warm-up; load generator + upstream on cpu $LOADGEN_CPU, proxies on cpu $PROXY_CPU; $WORKDIR"
printf '%-5s %-16s %-8s %10s %9s %9s %9s %9s %7s %7s %8s\n' round target group req/s p50_us p99_us p999_us max_us non2xx errors n429
started=$SECONDS
for s in $SCENARIOS; do
  [ "$s" != open ] || open_base
  run_scenario "$s"
done

ALL_NAMES="nginx_lr haproxy floodgate floodgate_redis ${EXTRA_NAMES[*]}"
ALL_GROUPS=$(for s in $SCENARIOS; do groups_of "$s"; done | tr '\n' ' ')
echo
echo "medians over $ROUNDS round(s); x_lr = median of per-round ratios to nginx_lr (same round);"
echo "spread = (max - min) / median of req/s; errors = unexpected answers + socket errors"
bench_summary "$RESULTS" "$ALL_NAMES" "$ALL_GROUPS" scenario "4:req/s 5:p50_us 6:p99_us"
if [[ " $SCENARIOS " == *" open "* ]]; then
  echo
  if [ -n "$OHA" ]; then
    echo "open loop (oha -c64 --latency-correction at $(open_rate 50), $(open_rate 75), $(open_rate 90) req/s; latency from when each request was due):"
  else
    echo "open loop (h2load at $(open_rate 50), $(open_rate 75), $(open_rate 90) req/s over $OPEN_CONNS connections; held = answers"
    echo "slower than a connection's gap between requests, each of which may have held the next one back):"
  fi
  bench_summary "$RESULTS" "$ALL_NAMES" "open50 open75 open90" scenario "4:req/s 6:p99_us 9:p999_us 10:max_us 14:held"
fi
if [[ " $SCENARIOS " == *" storm "* ]]; then
  echo
  echo "refusal storm: refusals checked against their keys (n429), share of the answers, spent keys admitted:"
  awk -F'\t' '$3 == "storm" { n[$2] += $11; r[$2] += $13; s[$2] += $12 }
    END { for (t in n) printf "%-16s n429 %d of %d (%.3f), spent keys admitted %d\n", t, n[t], r[t], r[t] ? n[t] / r[t] : 0, s[t] }' "$RESULTS"
fi
if [[ " $SCENARIOS " == *" redis "* ]]; then
  echo
  echo "the Redis store per round against the memory store (x_ref: floodgate_redis / floodgate):"
  bench_summary "$RESULTS" "floodgate_redis" redis scenario "4:req/s 5:p50_us 6:p99_us" floodgate
fi
echo "(per-run rows: $RESULTS; logs: $WORKDIR; $((SECONDS - started)) s)"
if [ -s "$WRONG" ]; then
  echo "$(wc -l <"$WRONG") wrong answer(s):" >&2; cat "$WRONG" >&2
  exit 1
fi
echo "answers: all as expected"
