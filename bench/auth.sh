#!/usr/bin/env bash
# The cost of auth on a hot read: GET /contexts/bench_hot with wrk, auth on (a bearer key on
# every request, resolved from the in-process cache of verified keys) against auth off, in
# one run, on one SQLite file. The two modes alternate ROUNDS times (on, off, on, off, ...)
# so that drift on the machine falls on both; each round restarts the server in that mode.
#
#   bench/auth.sh                        # 3 rounds of 10 s per mode
#   ROUNDS=5 DURATION=20s bench/auth.sh
#   SKIP_BUILD=1 bench/auth.sh           # reuse target/release/contextd
#
# Knobs: DURATION (10s), ROUNDS (3), THREADS (2), CONNECTIONS (32), WARMUP (2s),
# TARGET_PCT (5: the most auth may cost, in percent of req/s), SKIP_BUILD=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2s}
TARGET_PCT=${TARGET_PCT:-5}

die() { echo "bench/auth: $*" >&2; exit 1; }
for tool in wrk curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench/auth: cargo build --release --bin contextd"
    cargo build --release --quiet --bin contextd
fi
BIN=target/release/contextd
[[ -x $BIN ]] || die "$BIN is missing"

RUN_DIR=bench/results/auth-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
SQLITE_DB=$RUN_DIR/contextd.db
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
KEY=$($BIN keys generate)
SERVER=

stop_server() {
    if [[ -n $SERVER ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=
    fi
}
trap stop_server EXIT

# start_server MODE: serves the same file with auth.mode MODE, the key as bootstrap admin key.
start_server() {
    DATABASE_URL=sqlite:$SQLITE_DB \
        CONTEXTD__SERVER__BIND=127.0.0.1:$PORT \
        CONTEXTD__AUTH__MODE=$1 \
        CONTEXTD__AUTH__BOOTSTRAP_KEY=$KEY \
        RUST_LOG=warn \
        "$BIN" serve >>"$RUN_DIR/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 200); do
        curl -fs "$BASE/readyz" >/dev/null 2>&1 && return   # ready: the store is open
        sleep 0.05
    done
    die "the server did not start; see $RUN_DIR/server.log"
}

# run_wrk NAME SECONDS [wrk args...]: one wrk run with the RESULT line of bench/stats.lua.
run_wrk() {
    local name=$1 seconds=$2
    shift 2
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${seconds}" --latency "$@" \
        -s bench/get.lua "$BASE/contexts/bench_hot" >"$RUN_DIR/$name.txt"
    grep '^RESULT ' "$RUN_DIR/$name.txt" >/dev/null || die "no RESULT in $RUN_DIR/$name.txt"
}
field() { grep '^RESULT ' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

start_server on
curl -fs -X PUT "$BASE/contexts/bench_hot" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' \
    --data "$(jq -c '{data: ., source: "mcp"}' bench/payload.json)" >/dev/null ||
    die "cannot seed bench_hot"
[[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/contexts/bench_hot") == 401 ]] ||
    die "auth is not on"
stop_server

declare -a ON_RPS OFF_RPS ON_P99 OFF_P99
for round in $(seq 1 "$ROUNDS"); do
    for mode in on off; do
        start_server "$mode"
        args=()
        [[ $mode == on ]] && args=(-H "Authorization: Bearer $KEY")
        run_wrk "warmup_${mode}_$round" "$WARMUP" "${args[@]}"
        run_wrk "get_${mode}_$round" "$DURATION" "${args[@]}"
        file=$RUN_DIR/get_${mode}_$round.txt
        [[ $(field non2xx "$file") == 0 ]] || die "non-2xx answers in $file"
        rps=$(field rps "$file")
        p99=$(field p99_ms "$file")
        printf 'round %d  auth %-3s  %10.1f req/s  p99 %7.3f ms\n' "$round" "$mode" "$rps" "$p99"
        if [[ $mode == on ]]; then ON_RPS+=("$rps"); ON_P99+=("$p99"); else OFF_RPS+=("$rps"); OFF_P99+=("$p99"); fi
        stop_server
    done
done

mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
on=$(mean "${ON_RPS[@]}")
off=$(mean "${OFF_RPS[@]}")
cost=$(awk -v on="$on" -v off="$off" 'BEGIN { printf "%.1f", 100 * (off - on) / off }')
echo
echo "hot GET, $ROUNDS rounds of $DURATION, $THREADS threads, $CONNECTIONS connections, SQLite"
printf '  auth off: %10.1f req/s (mean), p99 %s ms\n' "$off" "$(mean "${OFF_P99[@]}")"
printf '  auth on:  %10.1f req/s (mean), p99 %s ms\n' "$on" "$(mean "${ON_P99[@]}")"
printf '  auth costs %s%% of req/s (target: at most %s%%): %s\n' "$cost" "$TARGET_PCT" \
    "$(awk -v c="$cost" -v t="$TARGET_PCT" 'BEGIN { print (c <= t) ? "met" : "NOT met" }')"
echo "raw outputs: $RUN_DIR"
