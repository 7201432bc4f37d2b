#!/usr/bin/env bash
# The cluster's costs and speed, with a real redis-server on loopback:
#
#   propagation  two nodes; the sink answers every message with Gmail's 550 5.7.26, a
#                SuspendTenant rule fires on node a once per tenant, FIRINGS tenants: the
#                time from a's Suspension record to b's for the same id (both logs are
#                stamped by the same machine's clock), p50/p99/max;
#   on vs off    smtp-source → one node → smtp-sink (kept connections), N messages, with
#                no [cluster] and with [cluster] (every connection then takes a lease on
#                the cluster's connection_limit), RUNS times in turn: medians and ratio;
#   two vs one   the same N messages through two nodes (N/2 each, injected at once) and
#                through one, both with [cluster]: the cluster's total rate (one machine,
#                2 cores: the nodes compete for them);
#   postfix      the same N messages through Postfix relaying to the same smtp-sink, in
#                the same run: every mode is also given as a ratio to it.
#
#   bench/cluster.sh [MESSAGES] [RUNS] [FIRINGS]      defaults: 20000 3 100
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/switchyard.sh
. bench/postfix.sh

N=${1:-20000}; RUNS=${2:-3}; FIRINGS=${3:-100}; S=20; L=5120
work=$(mktemp -d /var/tmp/switchyard-cluster.XXXXXX)
chmod 755 "$work"  # Postfix runs as user postfix and must reach its queue
sy_cleanup_on_exit "$work"
trap 'postfix_stop "$work/postfix"; for p in "${pids[@]}" ${sy_pid:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cargo build --release -q
base=$((20000 + RANDOM % 10000))
redis_port=$((base + 1)); sink_port=$((base + 2)); reject_port=$((base + 3))
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no > "$work/redis.log" 2>&1 &
pids+=($!)
smtp-sink -u root 127.0.0.1:$sink_port 256 &
pids+=($!)
printf '[[rule]]\ncode = 550\nmsg = "5.7.26 This message does not have authentication information or fails to pass authentication checks (SPF or DKIM)"\n' \
  > "$work/responses.toml"
target/release/switchyard sink --listen "127.0.0.1:$reject_port" --responses "$work/responses.toml" &
pids+=($!)
for p in $redis_port $sink_port $reject_port; do sy_wait_port "$p"; done

now() { date +%s.%N; }
node_pids=()
# node NAME DIR PORT ROUTE [cluster]: configure and start one node (pid appended to node_pids)
node() {
  local name=$1 dir=$2 route=$4
  mkdir -p "$dir"
  sy_port=$3; sy_http=$(($3 + 1))
  sy_config "$dir" "$route"
  if [ "${5:-}" = cluster ]; then
    printf '\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode = "%s"\nkey_prefix = "bench-%s"\n' \
      "$redis_port" "$name" "$(basename "$(dirname "$dir")")" >> "$dir/switchyard.toml"
  fi
  if [ -n "${6:-}" ]; then
    printf '\n[shaping]\nfiles = ["%s"]\n' "$6" >> "$dir/switchyard.toml"
  fi
  sy_start "$dir"
  node_pids+=("$sy_pid"); pids+=("$sy_pid"); sy_pid=
}
stop_nodes() {
  for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  node_pids=()
}
# delivered HTTP_PORT: messages the node on that port has delivered
delivered() { sy_http=$1 sy_metric '^switchyard_delivery_total\{.*outcome="delivered"'; }

# --- propagation ---
printf '[["example.org".automation]]\nname = "gmail-auth"\nregex = "This message does not have authentication information"\naction = "SuspendTenant"\nduration = "3 hours"\n' \
  > "$work/shaping.toml"
node a "$work/prop/a" $((base + 10)) "example.org=127.0.0.1:$reject_port" cluster "$work/shaping.toml"
node b "$work/prop/b" $((base + 12)) "example.org=127.0.0.1:$reject_port" cluster "$work/shaping.toml"
sleep 2
python3 - "$((base + 10))" "$FIRINGS" <<'PY'
import smtplib, sys
from email.message import EmailMessage
port, n = int(sys.argv[1]), int(sys.argv[2])
with smtplib.SMTP("127.0.0.1", port) as s:
    for i in range(n):
        m = EmailMessage()
        m["From"], m["To"], m["Subject"], m["X-Tenant"] = "news@t.example", "u@example.org", f"firing {i}", f"t{i}"
        m.set_content("firing")
        s.send_message(m)
PY
for _ in $(seq 600); do
  [ "$(cat "$work"/prop/b/data/logs/*.jsonl 2>/dev/null | grep -c '"type":"Suspension"')" -ge "$FIRINGS" ] && break
  sleep 0.1
done
stop_nodes
prop=$(python3 - "$work/prop" "$FIRINGS" <<'PY'
import glob, json, sys
from datetime import datetime
def times(node):
    out = {}
    for f in glob.glob(f"{sys.argv[1]}/{node}/data/logs/*.jsonl"):
        for line in open(f):
            r = json.loads(line)
            if r.get("type") == "Suspension":
                t = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
                out.setdefault(r["id"], t)
    return out
a, b = times("a"), times("b")
lags = sorted(b[i] - a[i] for i in a if i in b)
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
print(f"propagation over {len(lags)} of {sys.argv[2]} firings (a's Suspension record → b's): p50 {q(0.5)*1000:.1f} ms, p99 {q(0.99)*1000:.1f} ms, max {lags[-1]*1000:.1f} ms")
PY
)

# --- on vs off, two vs one ---
# relay MODE RUN: prints "MODE rate"
relay() {
  local mode=$1 dir="$work/relay-$1-$2" port=$((base + 20 + $2 * 10)) start end
  local route="example.org=127.0.0.1:$sink_port"
  case $mode in
    off) node a "$dir/a" "$port" "$route" ;;
    on) node a "$dir/a" "$port" "$route" cluster ;;
    two) node a "$dir/a" "$port" "$route" cluster; node b "$dir/b" $((port + 2)) "$route" cluster ;;
    postfix) postfix_start "$work/postfix" "$port" "relayhost = [127.0.0.1]:$sink_port" "smtp_tls_security_level = none" ;;
  esac
  sleep 1.5
  start=$(now)
  if [ "$mode" = two ]; then
    smtp-source -d -s $((S / 2)) -m $((N / 2)) -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$port" &
    smtp-source -d -s $((S / 2)) -m $((N / 2)) -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$((port + 2))"
    wait %%
    until [ $(( $(delivered $((port + 1))) + $(delivered $((port + 3))) )) -ge "$N" ]; do sleep 0.05; done
  elif [ "$mode" = postfix ]; then
    smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$port"
    until [ "$(postfix_queued "$work/postfix")" -eq 0 ]; do sleep 0.05; done
  else
    smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$port"
    until [ "$(delivered $((port + 1)))" -ge "$N" ]; do sleep 0.05; done
  fi
  end=$(now)
  stop_nodes
  [ "$mode" = postfix ] && { postfix_stop "$work/postfix"; rm -rf "$work/postfix"; }
  rm -rf "$dir"
  echo "$mode $(echo "$N / ($end - $start)" | bc -l)"
}
out="$work/results.txt"
for r in $(seq "$RUNS"); do
  for mode in off on two postfix; do relay "$mode" "$r" >> "$out"; done
done
echo "$prop"
python3 - "$out" "$N" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda m: statistics.median(float(r[1]) for r in rows if r[0] == m)
runs = lambda m: ", ".join(f"{float(r[1]):.0f}" for r in rows if r[0] == m)
off, on, two, pf = med("off"), med("on"), med("two"), med("postfix")
print(f"messages={sys.argv[2]} runs={len(rows) // 4} (20 sessions, 5 KiB, kept connections, smtp-sink)")
print(f"postfix                  {pf:8.0f} msg/s  (runs: {runs('postfix')})")
print(f"one node, no [cluster]   {off:8.0f} msg/s  {off / pf:6.2f}x postfix  (runs: {runs('off')})")
print(f"one node, [cluster] on   {on:8.0f} msg/s  {on / pf:6.2f}x postfix  {on / off * 100:6.1f} % of off  (runs: {runs('on')})")
print(f"two nodes, [cluster] on  {two:8.0f} msg/s  {two / pf:6.2f}x postfix  {two / on * 100:6.1f} % of one node  (runs: {runs('two')})")
PY
