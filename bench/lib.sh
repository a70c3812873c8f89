# bench/lib.sh — the shell pieces bench/compare.sh and bench/suite.sh share: tools, the build,
# the work directory, processes started in their own session and stopped on exit, nginx configs
# that write only into the work directory, wrk's result line, and the summary of interleaved
# rounds (medians of per-round ratios to nginx_lr). Source it; nothing runs until called.

# ---- options both scripts take -------------------------------------------------------------------
# bench_option ARGS...: when $1 is -r, -d, -w, -o, --no-build, --proxy or -h, takes it (setting
# ROUNDS, DURATION, WARMUP, WORKDIR, BUILD or EXTRA_NAMES/PORTS/CMDS) and sets BENCH_SHIFT to the
# arguments it used; else BENCH_SHIFT=0.
bench_option() {
  BENCH_SHIFT=2
  case "$1" in
    -r) ROUNDS=$2 ;;
    -d) DURATION=$2 ;;
    -w) WARMUP=$2 ;;
    -o) WORKDIR=$2 ;;
    --no-build) BUILD=0; BENCH_SHIFT=1 ;;
    --proxy)
      [ $# -ge 4 ] || { echo "--proxy needs NAME PORT COMMAND" >&2; exit 2; }
      EXTRA_NAMES+=("$2"); EXTRA_PORTS+=("$3"); EXTRA_CMDS+=("$4"); BENCH_SHIFT=4 ;;
    -h|--help) usage; exit 0 ;;
    *) BENCH_SHIFT=0 ;;
  esac
}
bench_numbers() { # N...: whole numbers, and at least one round of one second
  local n
  for n in "$@"; do [[ $n =~ ^[0-9]+$ ]] || { echo "not a number: $n" >&2; exit 2; }; done
  [ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || { echo "need at least 1 round of 1 s" >&2; exit 2; }
}

# ---- cpus: load generator and upstream on one, proxies on another ------------------------------
bench_cpus() { # sets LOADGEN_CPU and PROXY_CPU (environment overrides)
  if [ "$(nproc)" -ge 2 ]; then
    LOADGEN_CPU=${LOADGEN_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
  else
    LOADGEN_CPU=${LOADGEN_CPU:-0} PROXY_CPU=${PROXY_CPU:-0}
    echo "# one cpu only: the load generator, the upstream and the proxies share it" >&2
  fi
}

# ---- tools -------------------------------------------------------------------------------------
bench_need() { # COMMAND:PACKAGE...: apt-get installs the packages whose command is missing
  local pair missing=() sudo=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2; return 1; }
    sudo=(sudo)
  fi
  echo "# installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}
bench_bin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

bench_build() { # REPO: the release build of this checkout (FLOODGATE is its binary)
  echo "# cargo build --release --locked" >&2
  (cd "$1" && nice cargo build --release --locked >&2)
}

# ---- work directory and process bookkeeping ----------------------------------------------------
bench_workdir() { # DIR-OR-EMPTY PREFIX: sets WORKDIR
  WORKDIR=${1:-$(mktemp -d "/tmp/$2.XXXXXX")}
  mkdir -p "$WORKDIR"; WORKDIR=$(cd "$WORKDIR" && pwd)
  chmod 755 "$WORKDIR"   # nginx's workers run as another user when started as root
}

STARTED=()   # process-group leaders started here (setsid), stopped on exit
stop_groups() { # PID...: TERM to each group, up to 5 s, then KILL
  local pid i
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for i in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
stop_all() { stop_groups "${STARTED[@]}"; STARTED=(); }
bench_traps() {
  trap stop_all EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
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
ports_free() { # PORT...: fails naming the first one something listens on
  local port
  for port in "$@"; do
    if listening "$port"; then echo "127.0.0.1:$port is taken; stop what listens there" >&2; return 1; fi
  done
}

nginx_conf() { # FILE BODY [EVENTS] [MAIN]: an nginx config that writes only into the work directory
  cat >"$1" <<EOF
worker_processes 1;
pid $1.pid;
error_log $1.err warn;
${4:-}
events { worker_connections ${3:-4096}; }
http {
  access_log off;
  client_body_temp_path $WORKDIR/tmp-body; proxy_temp_path $WORKDIR/tmp-proxy;
  fastcgi_temp_path $WORKDIR/tmp-fcgi; uwsgi_temp_path $WORKDIR/tmp-uwsgi; scgi_temp_path $WORKDIR/tmp-scgi;
  keepalive_requests 100000000; keepalive_timeout 120s;
$2
}
EOF
}

bench_banner() { # REPO NGINX_BIN: the machine, the tools and the commit
  echo "# $(nproc) cpus ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
  echo "# $("$2" -v 2>&1) | $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2) | floodgate $(cd "$1" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
}

# wrk's answer on one line, read by run_wrk: `RESULT req/s p50_us p99_us non2xx socket_errors
# p99.9_us max_us n429 admitted_spent requests`. A script that checks each answer itself keeps
# its wrk threads in `threads` and counts, per thread, `n429` (refusals it expected), `bad`
# (other wrong answers: they replace wrk's non-2xx count) and `spent200` (admitted when a
# refusal was expected).
WRK_DONE='done = function(summary, latency, requests)
  local e, non2xx, n429, spent200 = summary.errors, summary.errors.status, 0, 0
  if threads then
    non2xx = 0
    for _, t in ipairs(threads) do
      n429 = n429 + t:get("n429"); non2xx = non2xx + t:get("bad"); spent200 = spent200 + t:get("spent200")
    end
  end
  io.write(string.format("RESULT %.0f %d %d %d %d %d %d %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), non2xx, e.connect + e.read + e.write + e.timeout,
    latency:percentile(99.9), latency.max, n429, spent200, summary.requests))
end'
run_wrk() { # URL CONNS SECS SCRIPT [THREADS] -> the RESULT fields
  timeout $(($3 + 20)) taskset -c "$LOADGEN_CPU" wrk -t"${5:-1}" -c"$2" -d"$3"s -s "$4" "$1" 2>&1 |
    awk '/^RESULT/ { $1 = ""; sub(/^ /, ""); print }' || true
}

# ---- summary: medians, and medians of the per-round ratios to a reference -------------------------
# RESULTS is tab-separated: round, target, group, req/s, lat1, lat2, non2xx, errors[, more...]; a
# target's row in a group is compared with the reference's row (nginx_lr) of the same round and
# group. COLUMNS names the columns shown, e.g. "4:req/s 5:p50_us 6:p99_us"; spread is
# (max - min) / median of column 4, errors the sum of columns 7 and 8.
bench_summary() { # RESULTS "TARGETS" "GROUPS" GROUP_TITLE "COLUMNS" [REFERENCE]
  awk -F'\t' -v order="$2" -v groups="$3" -v gtitle="$4" -v columns="$5" -v ref="${6:-nginx_lr}" '
function median(a, n,   i, j, t) {
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return n == 0 ? 0 : (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
}
{ seen[$2, $3] = 1; rounds[$1] = 1; row[$1, $2, $3] = 1; bad[$2, $3] += $7 + ($8 > 0 ? $8 : 0)
  for (c = 4; c <= NF; c++) v[$1, $2, $3, c] = $c }
END {
  nc = split(columns, C, " ")
  for (k = 1; k <= nc; k++) { split(C[k], f, ":"); col[k] = f[1]; name[k] = f[2] }
  xl = (ref == "nginx_lr") ? "x_lr" : "x_ref"
  printf "%-16s %-8s", "target", gtitle
  for (k = 1; k <= nc; k++) printf " %10s %6s", name[k], xl
  printf " %7s %6s\n", "spread", "errors"
  nt = split(order, T, " "); ng = split(groups, G, " ")
  for (gi = 1; gi <= ng; gi++) for (ti = 1; ti <= nt; ti++) {
    t = T[ti]; g = G[gi]
    if (!((t, g) in seen)) continue
    printf "%-16s %-8s", t, g
    for (k = 1; k <= nc; k++) {
      n = 0; m = 0; c = col[k]
      for (r in rounds) {
        if (!((r, t, g) in row)) continue
        n++; a[n] = v[r, t, g, c] + 0
        if (k == 1) { if (n == 1 || a[n] < lo) lo = a[n]; if (n == 1 || a[n] > hi) hi = a[n] }
        if ((r, ref, g) in row && v[r, ref, g, c] > 0) { m++; x[m] = a[n] / v[r, ref, g, c] }
      }
      med = median(a, n)
      if (k == 1) spread = (med > 0) ? 100 * (hi - lo) / med : 0
      printf " %10.0f %6s", med, m ? sprintf("%.2f", median(x, m)) : "-"
    }
    printf " %6.0f%% %6d\n", spread, bad[t, g]
  }
}' "$1"
}
