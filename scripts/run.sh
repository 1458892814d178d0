#!/usr/bin/env bash
# make run: a local cluster of Redis (started only if none answers on
# 127.0.0.1:6379), two message servers on 9501/9502 (WebSocket and the
# chat page on 9701/9702) and one proxy, in the foreground; with
# TOPOLOGY=mesh the servers link directly and no proxy runs. Metrics on
# 9101/9102 (servers) and 9100 (proxy). Ctrl-C stops everything this
# script started. Logs: .run/*.log
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
TOPOLOGY=${TOPOLOGY:-proxy}
case "$TOPOLOGY" in proxy|mesh) ;; *) echo "error: TOPOLOGY=$TOPOLOGY: want proxy or mesh" >&2; exit 2 ;; esac
RUN=.run
mkdir -p "$RUN"
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "stopped everything make run started"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null
  fi
}
# wait_for FILE PATTERN SECONDS: poll a log until a line matches.
wait_for() {
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "error: no '$2' in $1 within $3s:" >&2; tail -20 "$1" >&2; exit 1
    fi
    sleep 0.1
  done
}

if redis_up; then
  echo "using the Redis already answering on 127.0.0.1:6379"
else
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no >"$RUN/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis_up && break; sleep 0.1; done
  redis_up || { echo "error: Redis did not start; see $RUN/redis.log" >&2; exit 1; }
  echo "started redis-server on 127.0.0.1:6379"
fi

for n in 1 2; do
  "$BIN/chat-server" -id "s$n" -listen ":950$n" -peer-listen "127.0.0.1:960$n" -ws-listen ":970$n" \
    -metrics "127.0.0.1:910$n" -topology "$TOPOLOGY" -redis 127.0.0.1:6379 -multicore \
    >"$RUN/server$n.log" 2>&1 &
  pids+=($!)
done
wait_for "$RUN/server1.log" "client listener ready" 15
wait_for "$RUN/server2.log" "client listener ready" 15
if [ "$TOPOLOGY" = mesh ]; then
  wait_for "$RUN/server1.log" "mesh link up" 15
  fabric="servers linked directly (mesh)"
else
  "$BIN/chat-proxy" -servers s1=127.0.0.1:9601,s2=127.0.0.1:9602 -redis 127.0.0.1:6379 \
    -metrics 127.0.0.1:9100 >"$RUN/proxy.log" 2>&1 &
  pids+=($!)
  wait_for "$RUN/proxy.log" "proxy ready" 10
  fabric="proxy linked to both"
fi

cat <<TXT

chat cluster up: servers s1 on :9501 and s2 on :9502, $fabric.
Connect with:   telnet 127.0.0.1 9501     (and, in another terminal, 9502)
Then type:      {"cmd":"login","name":"zhima201"}
                {"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}
In a browser:   http://127.0.0.1:9701/    (and http://127.0.0.1:9702/)
Metrics:        http://127.0.0.1:9101/metrics, http://127.0.0.1:9102/metrics$([ "$TOPOLOGY" = proxy ] && echo ", http://127.0.0.1:9100/metrics (proxy)")
                (/healthz and /readyz on the same addresses)
Logs in $RUN/. Ctrl-C stops the cluster.
TXT
wait -n "${pids[@]}" || true
echo "a process of the cluster exited; see $RUN/*.log" >&2
