# Sourced by bench scripts: a switchyard daemon on loopback ports, relaying by [routes].
#   sy_config DIR ROUTE...   write DIR/switchyard.toml (data in DIR/data); ROUTE is
#                            "domain=host:port"; uses $sy_port (SMTP) and $sy_http (HTTP)
#   sy_start DIR             start it on that config (log in DIR/switchyard.log; the binary
#                            is $SWITCHYARD_BIN, default target/release/switchyard), set
#                            $sy_pid, and wait for its HTTP port
#   sy_metric REGEX          the sum of the /metrics lines matching REGEX
#   sy_wait_port PORT        wait (up to 10 s) until something accepts on 127.0.0.1:PORT
#   sy_cleanup_on_exit DIR   on exit, kill $sy_pid and every pid in the array `pids`
#                            (started empty), and remove DIR

sy_config() {
  local dir=$1; shift
  {
    echo "hostname = \"switchyard.bench.test\""
    echo "data_dir = \"$dir/data\""
    echo "[smtp]"; echo "listen = [\"127.0.0.1:$sy_port\"]"
    echo "[http]"; echo "listen = \"127.0.0.1:$sy_http\""
    echo "[dns]"; echo "nameservers = [\"127.0.0.1:9\"]"
    echo "[routes]"
    for route in "$@"; do echo "\"${route%%=*}\" = \"${route#*=}\""; done
  } > "$dir/switchyard.toml"
}

sy_start() {
  "${SWITCHYARD_BIN:-target/release/switchyard}" serve --config "$1/switchyard.toml" 2>>"$1/switchyard.log" &
  sy_pid=$!
  sy_wait_port "$sy_http"
}

sy_wait_port() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done
}

sy_metric() {
  curl -s "127.0.0.1:$sy_http/metrics" | awk -v m="$1" '$0 ~ m {s+=$2} END{printf "%d\n", s}'
}

sy_cleanup_on_exit() {
  sy_work=$1
  pids=()
  trap 'for p in "${pids[@]}" ${sy_pid:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$sy_work"' EXIT
}
