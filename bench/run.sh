#!/usr/bin/env bash
# contextd benchmark: HTTP throughput and latency with wrk, on a fresh Postgres database and
# then on a fresh SQLite file, and the bare Postgres cost of the same write transaction with
# pgbench. See bench/README.md.
#
#   bench/run.sh                      # 15 s per test
#   DURATION=5s bench/run.sh          # quicker
#   SKIP_BUILD=1 bench/run.sh         # reuse target/release/contextd
#
# Knobs (environment): DURATION (15s; seconds, "15s" or "1m"), THREADS (2), CONNECTIONS (32),
# WARMUP (3s before each wrk test; 0 for none), PGHOST (127.0.0.1), PGPORT (5432),
# PGUSER (postgres), BENCH_PORT (the server's; default a free one), SKIP_BUILD=1,
# PGBENCH_SCRIPT (bench/put.sql). CONTEXTD__* variables reach the server unchanged
# (e.g. CONTEXTD__DATABASE__POOL_SIZE=32).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-15s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-3s}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
PGBENCH_SCRIPT=${PGBENCH_SCRIPT:-bench/put.sql}
DB=contextd_bench
CONTEXTS=64      # bench_put_1 .. bench_put_64: the write tests spread over these
RETENTION=100    # versions kept per context (the server's default, set explicitly below)
export PGHOST PGPORT PGUSER

die() { echo "bench: $*" >&2; exit 1; }

# "15", "15s" or "1m" -> seconds (wrk takes "15s", pgbench -T takes 15).
seconds() {
    case "$1" in
        *[!0-9sm]* | "" ) die "bad duration '$1' (use e.g. 15, 15s or 1m)" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
DURATION_S=$(seconds "$DURATION")
WARMUP_S=$(seconds "$WARMUP")
(( DURATION_S > 0 )) || die "DURATION must be at least 1s"

for tool in wrk pgbench psql curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
command -v sqlite3 >/dev/null ||
    die "sqlite3 is not installed (Debian: DEBIAN_FRONTEND=noninteractive apt-get install -y sqlite3)"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_DIR=bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
echo "bench: writing raw outputs to $RUN_DIR"

# --- 1. build --------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench: cargo build --release --bin contextd"
    cargo build --release --bin contextd
fi
BIN=target/release/contextd
[[ -x $BIN ]] || die "$BIN is missing (build it, or unset SKIP_BUILD)"

# --- 2. stores, server ---------------------------------------------------------------------------
# STORE (postgres or sqlite) says which store settle and versions_sum below work on.
SQLITE_DB=$RUN_DIR/contextd.db   # the SQLite store's file (and its -wal, -shm), deleted at exit
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
sqlite_db() { sqlite3 -bail -cmd ".timeout 5000" "$SQLITE_DB" "$@"; }

PORT=${BENCH_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
BASE=http://127.0.0.1:$PORT

SERVER_PID=
SERVER_LOG=
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
remove_sqlite_db() { rm -f "$SQLITE_DB" "$SQLITE_DB-wal" "$SQLITE_DB-shm"; }
trap 'stop_server; remove_sqlite_db' EXIT

# Dies with the server's exit status and log when it is no longer running.
check_server() {
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        local status=0
        wait "$SERVER_PID" || status=$?
        SERVER_PID=
        tail -n 50 "$SERVER_LOG" >&2
        die "the server is gone (exit status $status; 143 or 0 means it got SIGTERM)"
    fi
}
trap 'exit 130' INT TERM

# start_server DATABASE_URL LOG: runs the server on that store and waits for its /readyz.
start_server() {
    SERVER_LOG=$2
    DATABASE_URL=$1 \
    CONTEXTD__SERVER__BIND=127.0.0.1:$PORT \
    CONTEXTD__VERSIONS__RETENTION=$RETENTION \
    RUST_LOG=warn \
        "$BIN" serve >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!

    echo "bench: waiting for $BASE/readyz ($STORE)"
    for ((i = 0; ; i++)); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true) == 200 ]]; then
            break
        fi
        check_server
        (( i < 600 )) || die "no 200 from /readyz after 60 s (see $SERVER_LOG)"
        sleep 0.1
    done
}

# --- 3. seeding ----------------------------------------------------------------------------------
# One ~1 KB JSON object is the data of every context here (the writes add a few keys to it).
PAYLOAD_FILE=$RUN_DIR/payload.json
jq -c . bench/payload.json >"$PAYLOAD_FILE"
PAYLOAD=$(<"$PAYLOAD_FILE")
SIZE=${#PAYLOAD}

# seed: the hot context through the API; the write tests' contexts, already at $RETENTION
# versions each, straight into the tables (seed.sql with psql, seed.sqlite.sql with sqlite3,
# while the server idles); then checks both.
seed() {
    local code cache_status
    code=$(jq -c '{data: ., source: "factory"}' "$PAYLOAD_FILE" |
        curl -s -o "$RUN_DIR/seed_hot.json" -w '%{http_code}' -X PUT \
            -H 'Content-Type: application/json' --data-binary @- "$BASE/contexts/bench_hot")
    [[ $code == 201 ]] || die "PUT /contexts/bench_hot answered $code: $(cat "$RUN_DIR/seed_hot.json")"

    case $STORE in
        postgres)
            psql_db -v prefix=bench_put_ -v payload="$PAYLOAD" -v size="$SIZE" \
                -v contexts="$CONTEXTS" -v retention="$RETENTION" -f bench/seed.sql ;;
        sqlite)
            sqlite_db -cmd ".parameter set :prefix \"'bench_put_'\"" \
                -cmd ".parameter set :payload_file \"'$PAYLOAD_FILE'\"" \
                -cmd ".parameter set :size $SIZE" -cmd ".parameter set :contexts $CONTEXTS" \
                -cmd ".parameter set :retention $RETENTION" <bench/seed.sqlite.sql >/dev/null ;;
    esac
    code=$(curl -s -o "$RUN_DIR/seed_check.json" -w '%{http_code}' "$BASE/contexts/bench_put_1")
    [[ $code == 200 && $(jq .version "$RUN_DIR/seed_check.json") == "$RETENTION" ]] ||
        die "GET /contexts/bench_put_1 after seeding answered $code: $(cat "$RUN_DIR/seed_check.json")"
    # The hot GET test is about the cache: check that a repeated read is a hit.
    curl -s -o /dev/null "$BASE/contexts/bench_hot"
    cache_status=$(curl -s -D - -o /dev/null "$BASE/contexts/bench_hot" | tr -d '\r' |
        sed -n 's/^[Cc]ache-[Ss]tatus: *//p')
    if [[ $cache_status != *hit* ]]; then
        echo "bench: WARNING: a repeated GET /contexts/bench_hot is no cache hit" \
            "(Cache-Status: ${cache_status:-none})" >&2
    fi
    echo "bench: seeded $STORE: bench_hot ($SIZE bytes of data) and bench_put_1..$CONTEXTS" \
        "($RETENTION versions each)"
}

# --- helpers -------------------------------------------------------------------------------------
# field NAME FILE: a key=value from the RESULT line that stats.lua prints.
field() { grep '^RESULT ' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# Housekeeping before each write test, so each starts from the same footing: Postgres vacuums
# and checkpoints; SQLite checkpoints its WAL into the file.
settle() {
    case $STORE in
        postgres) psql_db -c "VACUUM ANALYZE" -c "CHECKPOINT" ;;
        sqlite) sqlite_db "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null ;;
    esac
}

# Sum of the write tests' current versions: each new version adds one.
versions_sum() {
    case $STORE in
        postgres)
            psql_db -At -c "SELECT coalesce(sum(version), 0) FROM factory_context_metadata
                            WHERE context_id LIKE 'bench\_put\_%'" ;;
        sqlite)
            sqlite_db "SELECT coalesce(sum(version), 0) FROM factory_context_metadata
                       WHERE context_id GLOB 'bench_put_*'" ;;
    esac
}

# run_wrk NAME THREADS CONNECTIONS SECONDS SCRIPT PATH [SCRIPT ARGS...]
run_wrk() {
    local name=$1 t=$2 c=$3 secs=$4 script=$5 path=$6
    shift 6
    local out=$RUN_DIR/wrk_$name.txt
    echo "bench: wrk $name: -t$t -c$c -d${secs}s $path"
    check_server
    local args=()
    (( $# == 0 )) || args=(-- "$@")
    wrk -t"$t" -c"$c" -d"${secs}s" --latency -s "$script" "$BASE$path" "${args[@]}" >"$out" 2>&1 ||
        { cat "$out" >&2; check_server; die "wrk $name failed"; }
    grep -q '^RESULT ' "$out" || { cat "$out" >&2; die "wrk $name printed no RESULT line"; }
    if grep -q '^FIRST_NON_2XX ' "$out"; then
        echo "bench: WARNING: $name had non-2xx responses ($(field statuses "$out")):" \
            "$(sed -n 's/^FIRST_NON_2XX //p' "$out")" >&2
    fi
}

warmup() {
    if (( WARMUP_S > 0 )); then
        run_wrk "warmup_$1" "$2" "$3" "$WARMUP_S" "${@:4}"
    fi
}

PUT_ARGS=("$PAYLOAD_FILE" "$CONTEXTS")
PUT_PATH=/contexts/bench_put_N   # for the record only: put.lua builds every request

# store_tests PREFIX: the hot GET and the write tests on the running server, into
# wrk_PREFIX*.txt; then checks that every 2xx PUT made a version (a request still in flight
# when wrk stops can add one more, per connection, that wrk never counted).
declare -A PUT_CHECK   # store -> "N 2xx PUTs, M versions"
store_tests() {
    local p=$1 before after ok put_ok=0 f
    warmup "${p}get_hot" "$THREADS" "$CONNECTIONS" bench/get.lua /contexts/bench_hot
    run_wrk "${p}get_hot" "$THREADS" "$CONNECTIONS" "$DURATION_S" bench/get.lua /contexts/bench_hot

    before=$(versions_sum)
    warmup "${p}put" "$THREADS" "$CONNECTIONS" bench/put.lua "$PUT_PATH" "${PUT_ARGS[@]}" "${p}warmup-$$"
    settle
    run_wrk "${p}put_c$CONNECTIONS" "$THREADS" "$CONNECTIONS" "$DURATION_S" bench/put.lua "$PUT_PATH" \
        "${PUT_ARGS[@]}" "${p}c$CONNECTIONS-$$"
    settle
    run_wrk "${p}put_c1" 1 1 "$DURATION_S" bench/put.lua "$PUT_PATH" "${PUT_ARGS[@]}" "${p}c1-$$"
    after=$(versions_sum)

    for f in "$RUN_DIR/wrk_warmup_${p}put.txt" "$RUN_DIR/wrk_${p}put_c$CONNECTIONS.txt" \
             "$RUN_DIR/wrk_${p}put_c1.txt"; do
        [[ -f $f ]] || continue
        ok=$(field statuses "$f" | tr ',' '\n' | awk -F: '$1 >= 200 && $1 < 300 { n += $2 } END { print n + 0 }')
        put_ok=$((put_ok + ok))
    done
    PUT_CHECK[$STORE]="$put_ok 2xx PUTs, $((after - before)) versions"
    echo "bench: $STORE server PUTs: $put_ok answered 2xx, $((after - before)) versions written"
    if (( after - before < put_ok )); then
        echo "bench: WARNING: $STORE: fewer versions than successful PUTs: some PUTs changed nothing" >&2
        PUT_CHECK[$STORE]+=" (FEWER versions than 2xx PUTs)"
    fi
}

# --- 4. Postgres: fresh database, server, wrk ----------------------------------------------------
STORE=postgres
psql -X -q -v ON_ERROR_STOP=1 -d postgres \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
start_server "postgres://$PGUSER@$PGHOST:$PGPORT/$DB" "$RUN_DIR/server.log"
seed

warmup healthz "$THREADS" "$CONNECTIONS" bench/get.lua /healthz
run_wrk healthz "$THREADS" "$CONNECTIONS" "$DURATION_S" bench/get.lua /healthz
store_tests ""
stop_server

# --- 5. SQLite: fresh file, server, wrk ----------------------------------------------------------
# The server creates the file and its schema; seed.sqlite.sql then writes beside the idle
# server (WAL mode lets another process do that).
STORE=sqlite
remove_sqlite_db
start_server "sqlite:$SQLITE_DB" "$RUN_DIR/server_sqlite.log"
seed
store_tests sqlite_
stop_server
remove_sqlite_db

# --- 6. pgbench (Postgres) -----------------------------------------------------------------------
STORE=postgres
# run_pgbench NAME CLIENTS JOBS: writes pgbench_NAME.txt and sets PG_TPS PG_P50 PG_P99 PG_FAIL.
run_pgbench() {
    local name=$1 c=$2 j=$3 out=$RUN_DIR/pgbench_$1.txt prefix=$RUN_DIR/pgbench_log_$1
    echo "bench: pgbench $name: -c$c -j$j -T$DURATION_S $PGBENCH_SCRIPT"
    pgbench -n -M prepared -f "$PGBENCH_SCRIPT" -c "$c" -j "$j" -T "$DURATION_S" \
        --log --log-prefix="$prefix" \
        -D payload="$PAYLOAD" -D size="$SIZE" -D contexts="$CONTEXTS" -D retention="$RETENTION" \
        "$DB" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $name failed"; }
    local tps failed lat
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
    # The per-transaction log: column 3 is the transaction's latency in microseconds.
    lat=$(cat "$prefix".* | awk '{ print $3 }' | sort -n | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "nan nan"; exit }
            i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
            i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
            printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000
        }')
    rm -f "$prefix".*
    [[ -n $tps ]] || { cat "$out" >&2; die "pgbench $name printed no tps"; }
    PG_TPS=$(printf '%.1f' "$tps") PG_P50=${lat% *} PG_P99=${lat#* } PG_FAIL=${failed:-0}
}

before=$(versions_sum)
settle
run_pgbench c"$CONNECTIONS" "$CONNECTIONS" "$THREADS"
PG_TPS_C=$PG_TPS PG_P50_C=$PG_P50 PG_P99_C=$PG_P99 PG_FAIL_C=$PG_FAIL
settle
run_pgbench c1 1 1
PG_TPS_1=$PG_TPS PG_P50_1=$PG_P50 PG_P99_1=$PG_P99 PG_FAIL_1=$PG_FAIL
after=$(versions_sum)
pg_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' \
    "$RUN_DIR"/pgbench_c*.txt | awk '{ n += $1 } END { print n + 0 }')
echo "bench: pgbench: $pg_tx transactions, $((after - before)) versions written"

# --- 7. summary ----------------------------------------------------------------------------------
W=$RUN_DIR/wrk_
# row TEST STORE CONNS REQ/S P50 P99 ERRORS (printf pads bytes: "—" is 3 bytes, 1 column).
row() {
    local w=8
    [[ $2 == — ]] && w=10
    printf "%-28s %-${w}s %6s %11s %9s %9s %8s\n" "$@"
}
wrk_row() {
    local label=$1 store=$2 conns=$3 f=$W$4.txt
    row "$label" "$store" "$conns" "$(field rps "$f")" "$(field p50_ms "$f")" "$(field p99_ms "$f")" \
        "$(( $(field non2xx "$f") + $(field socket_errors "$f") ))"
}
# ratio A B: A / B to two decimals; pct A B: 100 A / B to one.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "nan" }'; }
# verdict V OP T: OP is >=, <= or < (V against T), or "within" (V, a percentage, within T of 100).
verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
    if (v == "nan") print "n/a"
    else if ((op == ">=" && v >= t) || (op == "<=" && v <= t) || (op == "<" && v < t) ||
             (op == "within" && v >= 100 - t && v <= 100 + t)) print "met"
    else print "MISSED" }'; }

HZ_RPS=$(field rps "${W}healthz.txt")
GET_RPS=$(field rps "${W}get_hot.txt")
PUT_P50_C=$(field p50_ms "${W}put_c$CONNECTIONS.txt")
PUT_P50_1=$(field p50_ms "${W}put_c1.txt")
GET_PCT=$(awk -v a="$GET_RPS" -v b="$HZ_RPS" 'BEGIN { printf "%.1f", 100 * a / b }')
R1=$(ratio "$PUT_P50_1" "$PG_P50_1")
RC=$(ratio "$PUT_P50_C" "$PG_P50_C")
# SQLite against Postgres, same run.
SQ_GET_PCT=$(pct "$(field rps "${W}sqlite_get_hot.txt")" "$GET_RPS")
SQ_PUT_P50_C=$(field p50_ms "${W}sqlite_put_c$CONNECTIONS.txt")
SQ_PUT_P50_1=$(field p50_ms "${W}sqlite_put_c1.txt")
SR1=$(ratio "$SQ_PUT_P50_1" "$PUT_P50_1")
SRC=$(ratio "$SQ_PUT_P50_C" "$PUT_P50_C")

{
    echo
    echo "contextd benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs," \
        "DURATION=${DURATION_S}s THREADS=$THREADS CONNECTIONS=$CONNECTIONS WARMUP=${WARMUP_S}s"
    echo
    row "test" "store" "conns" "req/s" "p50 ms" "p99 ms" "errors"
    wrk_row "GET /healthz" postgres "$CONNECTIONS" healthz
    wrk_row "GET /contexts/bench_hot" postgres "$CONNECTIONS" get_hot
    wrk_row "GET /contexts/bench_hot" sqlite "$CONNECTIONS" sqlite_get_hot
    wrk_row "PUT /contexts/bench_put_N" postgres "$CONNECTIONS" "put_c$CONNECTIONS"
    wrk_row "PUT /contexts/bench_put_N" sqlite "$CONNECTIONS" "sqlite_put_c$CONNECTIONS"
    wrk_row "PUT /contexts/bench_put_N" postgres 1 put_c1
    wrk_row "PUT /contexts/bench_put_N" sqlite 1 sqlite_put_c1
    row "pgbench write tx (tx/s)" — "$CONNECTIONS" "$PG_TPS_C" "$PG_P50_C" "$PG_P99_C" "$PG_FAIL_C"
    row "pgbench write tx (tx/s)" — 1 "$PG_TPS_1" "$PG_P50_1" "$PG_P99_1" "$PG_FAIL_1"
    echo
    printf '%-44s %7s  %-16s %s\n' \
        "hot GET req/s / healthz req/s" "$GET_PCT%" "(target >= 80%)" "$(verdict "$GET_PCT" '>=' 80)" \
        "PUT p50 / bare tx p50, 1 connection" "${R1}x" "(target <= 1.5x)" "$(verdict "$R1" '<=' 1.5)" \
        "PUT p50 / bare tx p50, $CONNECTIONS connections" "${RC}x" "(target <= 1.5x)" "$(verdict "$RC" '<=' 1.5)" \
        "hot GET req/s, SQLite / Postgres" "$SQ_GET_PCT%" "(target 90-110%)" \
            "$(verdict "$SQ_GET_PCT" within 10)" \
        "PUT p50, SQLite / Postgres, 1 connection" "${SR1}x" "(target < 1x)" \
            "$(verdict "$SQ_PUT_P50_1" '<' "$PUT_P50_1")" \
        "PUT p50, SQLite / Postgres, $CONNECTIONS connections" "${SRC}x" "(target < 1x)" \
            "$(verdict "$SQ_PUT_P50_C" '<' "$PUT_P50_C")"
    echo
    echo "errors: non-2xx responses + socket errors (wrk), failed transactions (pgbench)."
    echo "every 2xx PUT made a version? postgres: ${PUT_CHECK[postgres]}; sqlite: ${PUT_CHECK[sqlite]}"
    echo "load average before the run: $LOAD_START (1/5/15 min; well above 0 means other work" \
        "shared the CPUs and every figure is noisy)"
    echo "raw outputs: $RUN_DIR"
} | tee "$RUN_DIR/summary.txt"
