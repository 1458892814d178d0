#!/usr/bin/env bash
# make bench: starts a private stack on loopback (redis-server on a free
# port, two chat-servers in a mesh, each with cores/servers event loops),
# runs chat-bench
# against it with -pids for all of them, prints the report, writes
# bench-report.html and bench-report.json in the repo root, and stops
# everything it started, on Ctrl-C too.
#
#   SCENARIO=mixed|cross|local|hold|trickle|anchor|latency|floor scripts/bench.sh [chat-bench flags...]
#   SCENARIO=anchor-floor PAIRS=3 scripts/bench.sh [chat-bench flags...]
#
# Flags given here are passed to chat-bench after the scenario and override
# its presets (e.g. scripts/bench.sh -clients 2000 -duration 5s).
#
# SCENARIO=floor starts no Redis, server or proxy: one `chat-bench -relay`
# process (the minimal relay, its own process so /proc counts it alone)
# with two listeners takes the anchor load, giving the machine's floor cost
# per delivered message. SCENARIO=A-B (e.g. anchor-floor) runs A and B in
# turn, PAIRS times, each on a fresh stack, and prints a table per pair
# (scripts/bench-pairs.sh).
#
# Environment: BIN (default bin), SCENARIO (default mixed), NSERVERS
# (message servers, default 2; each holds at most ~19,000 clients under the
# 20,000 open-file limit, so 100,000 held clients need 6), TOPOLOGY (mesh,
# the default, as the README recommends up to a handful of servers: servers
# started with -topology mesh, no proxy, and the run waits until every
# server has logged a mesh link to every other; proxy: cross-server chats
# through one chat-proxy), LOOPS (event loops per server, default
# max(1, cores / NSERVERS): busy loops never outnumber the cores; the proxy
# gets as many), TRANSPORT (tcp, the
# default; ws: servers get -ws-listen 127.0.0.1:0 and the clients speak
# WebSocket to those addresses), BENCH_METRICS=1 (servers and proxy get
# -metrics 127.0.0.1:0; their addresses are printed), BENCH_LOGS (default
# .run/bench: the processes' logs), BENCH_JSON / BENCH_HTML (report files,
# default bench-report.json / bench-report.html), SERVER_ARGS / PROXY_ARGS
# (extra flags for the servers / the proxy, e.g. SERVER_ARGS=-no-route-cache),
# RELAY_ARGS (extra flags for the floor relay, e.g. "-relay-impl net").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
SCENARIO=${SCENARIO:-mixed}
NSERVERS=${NSERVERS:-2}
TOPOLOGY=${TOPOLOGY:-mesh}
LOOPS=${LOOPS:-$(( $(nproc) / NSERVERS > 0 ? $(nproc) / NSERVERS : 1 ))}
TRANSPORT=${TRANSPORT:-tcp}
LOGS=${BENCH_LOGS:-.run/bench}
JSON_OUT=${BENCH_JSON:-bench-report.json}
HTML_OUT=${BENCH_HTML:-bench-report.html}

case "$SCENARIO" in
  *-*) exec scripts/bench-pairs.sh "$@" ;;
esac
case "$TOPOLOGY" in
  proxy | mesh) ;;
  *) echo "bench.sh: TOPOLOGY must be proxy or mesh, not '$TOPOLOGY'" >&2; exit 2 ;;
esac
case "$TRANSPORT" in
  tcp | ws) ;;
  *) echo "bench.sh: TRANSPORT must be tcp or ws, not '$TRANSPORT'" >&2; exit 2 ;;
esac
if [ "$SCENARIO" = floor ] && [ "$TRANSPORT" = ws ]; then
  echo "bench.sh: the floor relay speaks TCP lines only; TRANSPORT=ws has no floor" >&2
  exit 2
fi
mkdir -p "$LOGS"

for b in chat-server chat-proxy chat-bench; do
  if [ ! -x "$BIN/$b" ]; then
    echo "building $BIN/$b" >&2
    go build -o "$BIN/" "./cmd/$b"
  fi
done
[ "$SCENARIO" = floor ] || command -v redis-server >/dev/null 2>&1 || scripts/ensure-redis.sh

# chat-bench counts every system call of the processes under test with a
# perf counter on the tracepoint raw_syscalls:sys_enter, which needs tracefs
# (and root). Mount it if it is missing and we may; without it the report
# says so and still counts read and write calls from /proc/PID/io.
if [ "$(id -u)" = 0 ] && [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# Every process of the stack runs in its own process group (job control,
# set -m), so a Ctrl-C in the terminal reaches only chat-bench, which then
# stops, drains and reports while the stack still runs; cleanup stops the
# stack afterwards. Not setsid: a new session is a new scheduler autogroup
# on kernels with sched_autogroup_enabled, and CPU shared between groups
# rather than threads made open-loop p99 at 10,000 msg/s 1.58 s instead of
# 70 ms on the development machine.
pids=()
names=()
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  # The proxy and servers first, Redis last: servers delete their sessions'
  # routes while they shut down.
  local i
  for i in "${!pids[@]}"; do [ "${names[$i]}" = redis ] || kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for i in "${!pids[@]}"; do [ "${names[$i]}" = redis ] || reap "${pids[$i]}"; done
  for i in "${!pids[@]}"; do
    [ "${names[$i]}" = redis ] && { kill -TERM "${pids[$i]}" 2>/dev/null || true; reap "${pids[$i]}"; }
  done
  [ ${#pids[@]} -gt 0 ] && echo "bench.sh: stopped ${names[*]} (logs in $LOGS/)" >&2
  exit "$rc"
}

# reap PID: waits up to 10 s for a child that was sent SIGTERM, then kills it.
reap() {
  local p=$1 deadline=$((SECONDS + 10))
  while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    echo "bench.sh: pid $p ignored SIGTERM for 10s; killing it" >&2
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in its own session with its log in $LOGS.
start() {
  local name=$1
  shift
  set -m
  "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  set +m
  pids+=($!)
  names+=("$name")
}

# wait_log NAME PATTERN SECONDS: polls NAME's log until PATTERN (an
# extended regex) shows up, failing if the deadline passes or the process
# exits first.
wait_log() {
  local name=$1 pat=$2 deadline=$((SECONDS + $3)) pid
  pid=$(pid_of "$name")
  until grep -qE -- "$pat" "$LOGS/$name.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench.sh: $name exited before logging '$pat':" >&2
      tail -20 "$LOGS/$name.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "bench.sh: no '$pat' from $name within $3s:" >&2
      tail -20 "$LOGS/$name.log" >&2
      return 1
    fi
    sleep 0.05
  done
}

# pid_of NAME: the pid of a process started with start.
pid_of() {
  local i
  for i in "${!names[@]}"; do [ "${names[$i]}" = "$1" ] && echo "${pids[$i]}" && return; done
  return 1
}

# log_addr NAME PATTERN: the addr= field of the first log line matching
# PATTERN; log_addrs: of every such line, comma-separated.
log_addr() {
  grep -m1 -E -- "$2" "$LOGS/$1.log" | sed -E 's/.*addr=("?)([^" ]+)\1.*/\2/'
}
log_addrs() {
  grep -E -- "$2" "$LOGS/$1.log" | sed -E 's/.*addr=("?)([^" ]+)\1.*/\2/' | paste -sd, -
}

# metrics_where NAME...: prints where each process serves its metrics
# (BENCH_METRICS=1), from the first log line that names metrics and an addr.
metrics_where() {
  local n a out=""
  for n in "$@"; do
    a=""
    for _ in $(seq 50); do
      a=$(log_addr "$n" 'metrics.*addr=') && [ -n "$a" ] && break
      sleep 0.1
    done
    if [ -n "$a" ]; then
      out+="${out:+, }$n http://$a/metrics"
    else
      out+="${out:+, }$n (no metrics address in $LOGS/$n.log)"
    fi
  done
  echo "bench.sh: metrics: $out" >&2
}

# Raise the open-file limit for everything started below (the servers hold
# one descriptor per client).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$SCENARIO" = floor ]; then
  # The floor: one relay process, two listeners, nothing else.
  # shellcheck disable=SC2086 # RELAY_ARGS is a word list
  start relay "$BIN/chat-bench" -relay 127.0.0.1:0,127.0.0.1:0 ${RELAY_ARGS:-}
  wait_log relay "relay listener ready" 15
  until [ "$(grep -c 'relay listener ready' "$LOGS/relay.log")" -ge 2 ]; do sleep 0.05; done
  clients=$(log_addrs relay "relay listener ready")
  pidlist="relay=$(pid_of relay)"
  echo "bench.sh: relay $clients (pid $(pid_of relay)); scenario floor" >&2
else
  # Redis on a free port: pick one nobody answers on; retry if another
  # process takes it first.
  redis_port=""
  for _ in 1 2 3 4 5; do
    p=$((20000 + RANDOM % 20000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
    start redis redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no
    if wait_log redis "Ready to accept connections" 10 2>/dev/null; then
      redis_port=$p
      break
    fi
    kill "${pids[-1]}" 2>/dev/null || true
    wait "${pids[-1]}" 2>/dev/null || true
    unset 'pids[-1]' 'names[-1]'
  done
  [ -n "$redis_port" ] || { echo "bench.sh: could not start redis-server; see $LOGS/redis.log" >&2; exit 1; }
  REDIS=127.0.0.1:$redis_port

  extra=()
  [ "$TOPOLOGY" = mesh ] && extra+=(-topology mesh)
  [ "$TRANSPORT" = ws ] && extra+=(-ws-listen 127.0.0.1:0)
  metrics=()
  [ "${BENCH_METRICS:-0}" = 1 ] && metrics=(-metrics 127.0.0.1:0)
  # shellcheck disable=SC2086 # SERVER_ARGS and PROXY_ARGS are word lists
  for n in $(seq "$NSERVERS"); do
    start "s$n" "$BIN/chat-server" -id "s$n" -listen 127.0.0.1:0 -peer-listen 127.0.0.1:0 \
      -redis "$REDIS" -loops "$LOOPS" "${extra[@]}" "${metrics[@]}" ${SERVER_ARGS:-}
  done
  clients="" wsaddrs="" peers="" pidlist=""
  for n in $(seq "$NSERVERS"); do
    wait_log "s$n" "client listener ready" 15
    wait_log "s$n" "peer listener ready" 15
    clients+="${clients:+,}$(log_addr "s$n" "client listener ready")"
    peers+="${peers:+,}s$n=$(log_addr "s$n" "peer listener ready")"
    pidlist+="${pidlist:+,}s$n=$(pid_of "s$n")"
    if [ "$TRANSPORT" = ws ]; then
      wait_log "s$n" "websocket listener ready" 15
      wsaddrs+="${wsaddrs:+,}$(log_addr "s$n" "websocket listener ready")"
    fi
  done
  if [ "$TOPOLOGY" = proxy ]; then
    # shellcheck disable=SC2086
    start proxy "$BIN/chat-proxy" -servers "$peers" -redis "$REDIS" -loops "$LOOPS" "${metrics[@]}" ${PROXY_ARGS:-}
    wait_log proxy "proxy ready" 15
    # "proxy ready" means the proxy has linked to every server; each server
    # logs its side of the link too.
    for n in $(seq "$NSERVERS"); do wait_log "s$n" "proxy link up" 15; done
    pidlist+=",proxy=$(pid_of proxy)"
    linked="proxy linked"
  else
    # Mesh: every server links to every other directly, found through
    # Redis; wait for each link from both ends.
    for n in $(seq "$NSERVERS"); do
      for m in $(seq "$NSERVERS"); do
        [ "$n" = "$m" ] || wait_log "s$n" "msg=\"mesh link up\".* peer=s$m( |\$)" 30
      done
    done
    linked="mesh linked"
  fi
  pidlist+=",redis=$(pid_of redis)"
  if [ "${BENCH_METRICS:-0}" = 1 ]; then
    ms=()
    for n in $(seq "$NSERVERS"); do ms+=("s$n"); done
    [ "$TOPOLOGY" = proxy ] && ms+=(proxy)
    metrics_where "${ms[@]}"
  fi
  if [ "$TRANSPORT" = ws ]; then
    echo "bench.sh: redis $REDIS; servers $clients, websocket $wsaddrs (peers $peers); $linked; scenario $SCENARIO over WebSocket" >&2
    clients=$wsaddrs
  else
    echo "bench.sh: redis $REDIS; servers $clients (peers $peers); $linked; scenario $SCENARIO" >&2
  fi
fi

# chat-bench runs in the foreground of this shell's process group: Ctrl-C
# reaches it (and this shell, whose trap runs once chat-bench has finished
# its report).
rc=0
"$BIN/chat-bench" -scenario "$SCENARIO" -servers "$clients" -transport "$TRANSPORT" -pids "$pidlist" \
  -html "$HTML_OUT" -json-file "$JSON_OUT" "$@" || rc=$?
if [ -f "$JSON_OUT" ] && [ $rc -eq 0 -o $rc -eq 130 ]; then
  echo "bench.sh: wrote $HTML_OUT and $JSON_OUT" >&2
fi
for n in "${names[@]}"; do
  [ "$n" = redis ] && continue
  if grep -qE 'level=(ERROR|WARN)' "$LOGS/$n.log"; then
    echo "bench.sh: $n logged warnings or errors (first 5; all in $LOGS/$n.log):" >&2
    grep -m5 -E 'level=(ERROR|WARN)' "$LOGS/$n.log" >&2 # not | head: SIGPIPE under pipefail
  fi
done
exit $rc
